#!/bin/bash
# Whitening at ε 1.0 improved from η 5e-5 (76.91) to 1e-4 (70.55): its step is smaller than Krause's at the same η,
# so 2 larger η, into the same grid folder.
# usage: directions_whiten_step.sh CORE
set -e
CORE=$1
cd /work/exp/code-scratch; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
D=/work/exp/joint/eval/directions-7200
E="taskset -c $CORE python scripts/evaluate.py -m checkpoint=/work/exp/joint/stage1-at-7200/best.pt data.dir=../shared/data/wikitext-2 eval.progress_bar=false split=valid methods=[dyneval] eval.max_articles=4 eval.dyneval_lam=5e-4 hydra.sweep.dir=$D/grid"
$E eval.dyneval_whiten=true eval.dyneval_whiten_eps=1.0 eval.dyneval_eta=2e-4,4e-4 > $D/grid-whiten-step.log 2>&1
python scripts/sweep_table.py $D/grid --sort-by dyneval > $D/grid.txt
date
