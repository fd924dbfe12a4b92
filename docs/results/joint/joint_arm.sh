#!/bin/bash
# A joint arm of the #25 experiment: from a stage-1 checkpoint, joint training (first order, every parameter adapting
# with Krause's rule in the loop) for X seconds of training, one core.
# usage: [CODE=worktree] joint_arm.sh NAME LM_CHECKPOINT SECONDS STATIC_LR CORE [extra overrides]
set -e
NAME=$1 LM=$2 X=$3 LR=$4 CORE=$5; shift 5
cd ${CODE:-/work/exp/code-joint}; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
taskset -c $CORE python scripts/train.py stage=meta rule=dyneval rule.eta=7e-5 rule.lam=0.001 \
  meta.estimator=first_order meta.train_static=true 'meta.dynamic=[*]' meta.split=train \
  meta.batch_size=10 meta.seg_len=5 meta.window=14 meta.static_lr=$LR meta.clip=0.25 \
  meta.valid_articles=2 meta.valid_max_tokens=4000 meta.lm_checkpoint=$LM data.dir=../shared/data/wikitext-2 \
  trainer.max_time=$X trainer.max_steps=null trainer.max_epochs=null trainer.eval_interval=200 trainer.log_interval=10 \
  trainer.progress_bar=false hydra.run.dir=/work/exp/joint/$NAME "$@"
date
