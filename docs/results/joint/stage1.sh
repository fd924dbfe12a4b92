#!/bin/bash
# Baseline stage 1 of the #25 equal-compute experiment: one core, checkpoints kept at 3600, 5400, 7200 s of training.
set -e
cd /work/exp/code-stage1; export PYTHONPATH=$PWD
D=/work/exp/joint/stage1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
for T in 3600 5400 7200; do
  R="trainer.resume=true"
  taskset -c 0 python scripts/train.py +experiment=small_adam_lm data.dir=../shared/data/wikitext-2 \
     trainer.max_time=$T trainer.max_epochs=null trainer.progress_bar=false hydra.run.dir=$D $R
  mkdir -p /work/exp/joint/stage1-at-$T && cp $D/checkpoints/*.pt /work/exp/joint/stage1-at-$T/
  date
done
