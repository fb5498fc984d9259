#!/usr/bin/env bash
# Human-video transfer (paper Fig. 7, Table VII) and the contrastive ablation downstream.
#
# Robot demonstrations exist only for task set A; action-free human-domain videos exist for A and B.
# Three CLAP-NTP policies share one Act-VAE and the same robot data:
#   robot_only    robot demos of A only                                   (the control)
#   video_con     + human videos of A and B, pseudo-labelled by the VD-VAE with the SigLIP term
#   video_nocon   + the same videos labelled by a VD-VAE trained without it (lambda_con = 0)
# and are scored in closed loop on A and on B. The paper's claim: videos lift success on B.
# Results and their reading: docs/results.md, "Human-video transfer".
#
#   bash experiments/video_transfer.sh                 # CPU scale
#   OUT=outputs/exp_vt NTP_STEPS=300 EPISODES=2 bash experiments/video_transfer.sh   # a quick look
source "$(dirname "$0")/common.sh"
OUT=${OUT:-outputs/exp_video_transfer}
A=${A:-door-open-v3,window-open-v3,button-press-topdown-v3,drawer-close-v3}
B=${B:-window-close-v3,drawer-open-v3}
ROBOT_EPISODES=${ROBOT_EPISODES:-30}     # robot demonstrations per task of A
VIDEO_EPISODES=${VIDEO_EPISODES:-30}     # human-domain videos per task of A and B
ACT_STEPS=${ACT_STEPS:-1500}
VD_STEPS=${VD_STEPS:-500}
NTP_STEPS=${NTP_STEPS:-1500}
EPISODES=${EPISODES:-10}                 # closed-loop episodes per task and policy
MAX_STEPS=${MAX_STEPS:-250}              # step budget per closed-loop episode

step $OUT/data/robot/meta/info.json data gen metaworld --tasks $A --episodes $ROBOT_EPISODES --codec h264 \
  --out $OUT/data/robot
step $OUT/data/human/meta/info.json data gen metaworld --domain human --tasks $A,$B --episodes $VIDEO_EPISODES \
  --codec h264 --out $OUT/data/human
step - train act-vae --config act_vae_cpu --data $OUT/data/robot \
  --out $OUT/act_vae --train.steps $ACT_STEPS --resume
for v in con nocon; do
  preset=vd_vae_small; [[ $v == nocon ]] && preset=vd_vae_small_nocon
  step - train vd-vae --config $preset --act-vae $OUT/act_vae \
    --robot-data $OUT/data/robot --video-data $OUT/data/human --out $OUT/vd_vae_$v --train.steps $VD_STEPS --resume
  step $OUT/vd_vae_$v/eval/eval.json eval vd-vae --vd-vae $OUT/vd_vae_$v --robot-data $OUT/data/robot \
    --video-data $OUT/data/human --out $OUT/vd_vae_$v/eval
  step $OUT/tokens/human_$v/meta.json label --vd-vae $OUT/vd_vae_$v --data $OUT/data/human --out $OUT/tokens/human_$v
done
for arm in robot_only video_con video_nocon; do
  videos=(); [[ $arm != robot_only ]] && videos=(--video-tokens $OUT/tokens/human_${arm#video_})
  step - train ntp --config ntp_small --act-vae $OUT/act_vae \
    --robot-data $OUT/data/robot "${videos[@]}" --out $OUT/ntp_$arm --train.steps $NTP_STEPS --resume
  step $OUT/eval/$arm.json eval rollout --policy $OUT/ntp_$arm --tasks $A,$B --episodes $EPISODES \
    --max-steps $MAX_STEPS --workers 2 --out $OUT/eval/$arm.json
done
"$(dirname "$0")/../.venv/bin/python" "$(dirname "$0")/summarize_transfer.py" --out $OUT --a $A --b $B
