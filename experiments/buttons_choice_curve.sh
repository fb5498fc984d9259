#!/usr/bin/env bash
# When does CLAP-NTP learn which button a colour is? One pilot of the buttons testbed (issue 24), with
# first-chunk probes (experiments/buttons_first_chunk_probe.py, validation block 1) at several steps of
# one schedule. The run stops at each PROBE_AT step (--train.stop-at), is probed, and resumes.
#
#   MIX=robot_only bash experiments/buttons_choice_curve.sh      # robot demonstrations only (red, green)
#   MIX=oracle300  bash experiments/buttons_choice_curve.sh      # + 300 human-look videos per colour WITH their
#                                                                 #   true actions (an upper bound on labels)
# Rebuilds what is missing from nothing (data, Act-VAE: about 40 min on 2 cores), then about 25 min per
# 6000-step run on a CPU with native bf16. Writes $OUT/validation/<run>_s<step>_<look>.json and merges them into
# benchmarks/results/buttons_choice_curve.json. Results: docs/results.md, pilots 18 and 19.
source "$(dirname "$0")/common.sh"
OUT=${OUT:-outputs/exp_human_video_transfer}
MIX=${MIX:-robot_only}
STEPS=${STEPS:-6000}
PROBE_AT=${PROBE_AT:-2000 4000 6000}
SEED=${SEED:-0}
EXTRA=${EXTRA:-}                       # more `clap train ntp` flags, e.g. --model.vlm.visual-pos sincos2d_add
NAME=${NAME:-${MIX}_${STEPS}_s${SEED}}
PY="$(dirname "$0")/../.venv/bin/python"
export MUJOCO_GL=${MUJOCO_GL:-egl}

GEN=(data gen buttons --size 128 --codec h264)
step $OUT/data/robot/meta/info.json "${GEN[@]}" --tasks red,green --episodes 150 --out $OUT/data/robot
step - train act-vae --config act_vae_cpu --data $OUT/data/robot --out $OUT/act_vae --train.steps 3000 --resume
step $OUT/data/robot_more/meta/info.json "${GEN[@]}" --tasks red,green --episodes 450 --seed 2 --out $OUT/data/robot_more
DATA=($OUT/data/robot $OUT/data/robot_more)
WEIGHTS=()
if [[ $MIX == oracle300 ]]; then
  step $OUT/recipe/data_human300_oracle/meta/info.json "${GEN[@]}" --domain human --human-keep-actions \
    --tasks red,green,blue,yellow --episodes 300 --out $OUT/recipe/data_human300_oracle
  DATA+=($OUT/recipe/data_human300_oracle)
  WEIGHTS=(--weights 0.5 1.5 1)        # robot : video = 2 : 1, the release's mixture; robot sets by size
elif [[ $MIX != robot_only ]]; then
  echo "MIX must be robot_only or oracle300, got $MIX" >&2; exit 2
fi
RUN=$OUT/curve/$NAME
mkdir -p $OUT/validation
for s in $PROBE_AT; do
  # shellcheck disable=SC2086
  step - train ntp --config ntp_small --act-vae $OUT/act_vae --robot-data "${DATA[@]}" "${WEIGHTS[@]}" \
    --train.steps $STEPS --model.vlm.visual-merge 2 --model.vlm.prefix-attention bidirectional \
    --train.seed $SEED --out $RUN --resume --train.stop-at $s --train.no-progress $EXTRA
  looks=robot
  [[ $s == "${PROBE_AT##* }" && $MIX != robot_only ]] && looks="robot human"
  for look in $looks; do
    probe=$OUT/validation/${NAME}_s${s}_${look}.json
    [[ -e $probe ]] || "$PY" -u "$(dirname "$0")/buttons_first_chunk_probe.py" $RUN --scenes 20 --seed 1 \
      --colours red,green,blue,yellow --domain $look --robot-type sawyer --out $probe
  done
done
"$PY" "$(dirname "$0")/summarize_choice_curve.py" $OUT/validation $NAME --json benchmarks/results/buttons_choice_curve.json
