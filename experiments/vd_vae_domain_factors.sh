#!/usr/bin/env bash
# Which part of the human-domain shift stops the VD-VAE from reading actions off video?
#
# One VD-VAE, trained on robot demonstrations of task set A plus human-domain videos, is evaluated on
# four action-free datasets that share seeds (the same scenes and expert motions) and differ in one
# factor at a time:
#   h_none   robot as shipped, no scene change        (the control: must read like robot data)
#   h_hand   arm hidden, hand only, no scene change   (the embodiment shift alone)
#   h_scene  robot as shipped, camera/light/table changed per episode (the scene shift alone)
#   h_full   both: the human domain every other experiment uses
#   h_skin   the whole arm drawn skin-coloured, no scene change (a forearm-like embodiment)
#   h_skinfull  skin-coloured arm and the scene changes
# VIDEO=<a --human-arm skin dataset> trains the second model of docs/results.md (skin-arm videos).
# Results and their reading: docs/results.md, "VD-VAE alignment", "Which shift breaks the reading".
#
#   ACT_VAE=outputs/demo/act_vae VIDEO=outputs/demo/data/human bash experiments/vd_vae_domain_factors.sh
# (as measured: the Act-VAE and human videos of `make demo`; without them the script trains its own)
source "$(dirname "$0")/common.sh"
OUT=${OUT:-outputs/exp_domain_factors}
A=${A:-door-open-v3,window-open-v3,button-press-topdown-v3,drawer-close-v3}
ROBOT_EPISODES=${ROBOT_EPISODES:-50}   # robot demonstrations per task
EVAL_EPISODES=${EVAL_EPISODES:-20}     # episodes per task of each one-factor dataset
VD_STEPS=${VD_STEPS:-1500}
GEN=(data gen metaworld --size 128 --codec h264 --tasks $A)

step $OUT/robot/meta/info.json "${GEN[@]}" --seed 0 --episodes $ROBOT_EPISODES --out $OUT/robot
H=(--seed 1 --episodes $EVAL_EPISODES --domain human)
OFF=(--human-camera-jitter 0 --human-light-jitter 0 --no-human-table-tint)
step $OUT/h_none/meta/info.json "${GEN[@]}" "${H[@]}" --human-arm shown "${OFF[@]}" --out $OUT/h_none
step $OUT/h_hand/meta/info.json "${GEN[@]}" "${H[@]}" "${OFF[@]}" --out $OUT/h_hand
step $OUT/h_scene/meta/info.json "${GEN[@]}" "${H[@]}" --human-arm shown --out $OUT/h_scene
step $OUT/h_full/meta/info.json "${GEN[@]}" "${H[@]}" --out $OUT/h_full
step $OUT/h_skin/meta/info.json "${GEN[@]}" "${H[@]}" --human-arm skin "${OFF[@]}" --out $OUT/h_skin
step $OUT/h_skinfull/meta/info.json "${GEN[@]}" "${H[@]}" --human-arm skin --out $OUT/h_skinfull
ACT_VAE=${ACT_VAE:-$OUT/act_vae}
if [[ $ACT_VAE == $OUT/act_vae ]]; then
  step - train act-vae --config act_vae_cpu --data $OUT/robot --out $ACT_VAE --train.steps 1500 --resume
fi
VIDEO=${VIDEO:-$OUT/video}
step $VIDEO/meta/info.json "${GEN[@]}" --seed 0 --episodes 15 --domain human --out $VIDEO
step - train vd-vae --config vd_vae_small --act-vae $ACT_VAE --robot-data $OUT/robot --video-data $VIDEO \
  --out $OUT/vd_vae --train.steps $VD_STEPS --train.warmup-steps 100 --train.batch-size 64 \
  --train.eval-every 500 --train.checkpoint-every 250 --resume
step $OUT/eval/eval.json eval vd-vae --vd-vae $OUT/vd_vae --robot-data $OUT/robot \
  --video-data $OUT/h_none $OUT/h_hand $OUT/h_scene $OUT/h_full $OUT/h_skin $OUT/h_skinfull $VIDEO --out $OUT/eval
