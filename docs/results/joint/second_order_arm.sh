#!/bin/bash
# The first-vs-second-order ablation of the #25 experiment: as joint_arm.sh's joint-1800 row (from stage 1 at
# 5,400 s, 1,800 s of joint training, Krause's rule in the loop at η 7e-5, λ 1e-3, Adam 3e-4 on θ0), but with θ0's
# gradient through the updates (meta.estimator=bptt meta.second_order=true), which every parameter adapting cannot
# afford here (91× stage 1 per token): the adapted set is the top LSTM layer and the decoder bias.
# usage: second_order_arm.sh NAME SECONDS CORE
set -e
NAME=$1 X=$2 CORE=$3
cd /work/exp/code-ablation; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
taskset -c $CORE python scripts/train.py stage=meta rule=dyneval rule.eta=7e-5 rule.lam=0.001 \
  meta.estimator=bptt meta.second_order=true meta.train_static=true 'meta.dynamic=[layers.1.*,decoder_bias]' \
  meta.split=train meta.batch_size=10 meta.seg_len=5 meta.window=14 meta.static_lr=3e-4 meta.clip=0.25 \
  meta.valid_articles=2 meta.valid_max_tokens=4000 meta.lm_checkpoint=/work/exp/joint/stage1-at-5400/best.pt \
  data.dir=../shared/data/wikitext-2 trainer.max_time=$X trainer.max_steps=null trainer.max_epochs=null \
  trainer.eval_interval=100 trainer.log_interval=10 trainer.progress_bar=false hydra.run.dir=/work/exp/joint/$NAME
date
