#!/usr/bin/env bash
# Does the 4-block RF head (the one that reaches 8x NTP/RF latency on SmolLM2-135M) learn as well as
# the release's 16-block head on the same 30-layer backbone? Both heads train on the frozen features
# of one CLAP-NTP (--ki --model.token-weight 0: the VLM is frozen), on the same data, steps and
# seed; compare their held-out chunk PSNR. Results: docs/results.md, "The latency ratio".
#
#   bash experiments/rf_head_depth.sh      # after `make demo` (uses its Act-VAE and robot data)
source "$(dirname "$0")/common.sh"
OUT=${OUT:-outputs/exp_head_depth}
D=${DEMO:-outputs/demo}
STEPS=${STEPS:-400}
step - train ntp --config ntp_smollm2 --model.vlm.layers 30 --model.vlm.visual-merge 2 \
  --act-vae $D/act_vae --robot-data $D/data/robot --out $OUT/ntp_smol30 \
  --train.steps 60 --train.batch-size 8 --train.warmup-steps 6 --train.eval-every 60 --train.checkpoint-every 60 --resume
for depth in 4 16; do
  step - train post --config post_small --ntp $OUT/ntp_smol30 --robot-data $D/data/robot \
    --out $OUT/post_d$depth --no-adapt-stage --ki --model.token-weight 0 --model.rf.max-depth $depth \
    --train.steps $STEPS --train.batch-size 16 --train.lr 1e-3 --train.warmup-steps 40 \
    --train.eval-every 200 --train.checkpoint-every 200 --eval-samples 128 --resume
done
