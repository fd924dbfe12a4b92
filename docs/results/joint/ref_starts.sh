#!/bin/bash
# Reference: the joint arms' start checkpoints (stage 1 at 3600 and 5400 s) on the 4 tuning articles, at the settings
# the rows chose, to tell what joint training changed from its start.
set -e
cd /work/exp/code-joint; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
for T in 3600 5400; do
taskset -c 0 python scripts/evaluate.py -m checkpoint=/work/exp/joint/stage1-at-$T/best.pt data.dir=../shared/data/wikitext-2 \
  eval.progress_bar=false split=valid 'methods=[dyneval]' eval.max_articles=4 eval.dyneval_eta=5e-5,7e-5 eval.dyneval_lam=5e-4,0.001 \
  hydra.sweep.dir=/work/exp/joint/eval/start-$T/grid > /work/exp/joint/eval/start-$T.log 2>&1
python scripts/sweep_table.py /work/exp/joint/eval/start-$T/grid --sort-by dyneval > /work/exp/joint/eval/start-$T/grid.txt
done
