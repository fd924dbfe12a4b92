#!/bin/bash
# The whitening direction diverged at η 1e-4 with ε 0.1 and trailed at 5e-5: a larger ε (a milder whitening; as
# ε grows the step tends to Krause's with η/ε) on 3 more settings, into the same grid folder.
# usage: directions_whiten_more.sh CORE
set -e
CORE=$1
cd /work/exp/code-scratch; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
D=/work/exp/joint/eval/directions-7200
E="taskset -c $CORE python scripts/evaluate.py -m checkpoint=/work/exp/joint/stage1-at-7200/best.pt data.dir=../shared/data/wikitext-2 eval.progress_bar=false split=valid methods=[dyneval] eval.max_articles=4 eval.dyneval_lam=5e-4 hydra.sweep.dir=$D/grid"
$E eval.dyneval_whiten=true eval.dyneval_whiten_eps=1.0 eval.dyneval_eta=5e-5,1e-4 > $D/grid-whiten-eps1.log 2>&1
$E eval.dyneval_whiten=true eval.dyneval_whiten_eps=0.3 eval.dyneval_eta=7e-5 > $D/grid-whiten-eps03.log 2>&1
python scripts/sweep_table.py $D/grid --sort-by dyneval > $D/grid.txt
date
