#!/usr/bin/env bash
# The MT10 experiments of docs/results.md, with the commands that produced them:
#   rate-distortion (paper Table V), CLAP-NTP closed loop, the post-training ablation KM vs plain
#   fine-tuning vs knowledge insulation (Table VI), and NTP vs RF success and latency (Table VIII).
# CPU scale: about 6 hours on 2 cores end to end; each step is skipped when its output exists and
# training resumes, so the script can be stopped and started again.
#
#   bash experiments/mt10.sh
source "$(dirname "$0")/common.sh"
OUT=${OUT:-outputs}
EPISODES=${EPISODES:-10}   # closed-loop episodes per task (10 tasks -> 100 per policy)

step $OUT/mt10/meta/info.json data gen metaworld --tasks mt10 --episodes 50 --workers 2 --out $OUT/mt10
step - train act-vae --config act_vae_cpu --data $OUT/mt10 --out $OUT/act_vae_mt10 --resume
step $OUT/act_vae_mt10/eval/mt10/eval.json eval act-vae --act-vae $OUT/act_vae_mt10 --data $OUT/mt10
step $OUT/rate_distortion_cpu/table.json eval rate-distortion --config cpu --data $OUT/mt10 \
  --out $OUT/rate_distortion_cpu

step - train ntp --config ntp_small --act-vae $OUT/act_vae_mt10 --robot-data $OUT/mt10 --out $OUT/ntp_mt10 --resume
step $OUT/ntp_mt10/eval/ntp_eval.json eval ntp --ntp $OUT/ntp_mt10 --samples 1024 --generate 128
step $OUT/ntp_mt10/rollout_mt10.json eval rollout --policy $OUT/ntp_mt10 --tasks mt10 --episodes $EPISODES --workers 1 \
  --out $OUT/ntp_mt10/rollout_mt10.json

# Table VI: the same NTP artifact post-trained three ways (stage 1 skipped: same robot, same data).
for variant in km nokm ki; do
  case $variant in km) flags=(); dir=post_mt10 ;; nokm) flags=(--km off); dir=post_mt10_nokm ;;
                   ki) flags=(--ki); dir=post_mt10_ki ;; esac
  step - train post --config post_small --ntp $OUT/ntp_mt10 --robot-data $OUT/mt10 --out $OUT/$dir \
    --no-adapt-stage --train.steps 1500 "${flags[@]}" --resume
  step $OUT/$dir/rollout_mt10.json eval rollout --policy $OUT/$dir --tasks mt10 --episodes $EPISODES --workers 1 \
    --out $OUT/$dir/rollout_mt10.json
done
# Table VIII: latency of NTP decoding vs RF denoising on the same backbone and input.
step $OUT/post_mt10/eval/latency.json eval latency --policy $OUT/post_mt10
