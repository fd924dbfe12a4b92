#!/bin/bash
# The from-scratch arm of the #25 experiment: joint training for the whole budget T = 7,200 s of training on one core,
# θ0 built fresh as stage 1 builds it (no meta.lm_checkpoint), Adam at stage 1's rate 3e-3, the statistics
# re-measured on the current θ0 every 200 steps on 20,000 tokens.
# usage: scratch_arm.sh CORE
set -e
CORE=$1
cd /work/exp/code-scratch; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
taskset -c $CORE python scripts/train.py +experiment=small_joint data.dir=../shared/data/wikitext-2 \
  meta.static_lr=0.003 meta.gradstat_refresh=200 meta.gradstat_refresh_tokens=20000 \
  trainer.max_time=7200 trainer.log_interval=10 trainer.progress_bar=false hydra.run.dir=/work/exp/joint/scratch-7200
date
