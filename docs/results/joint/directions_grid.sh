#!/bin/bash
# The update directions of issue #25, hand-set on the baseline row's θ0 (stage 1 for 7,200 s): each on Krause's
# tuned λ = 5e-4 (η 5e-5 unless the option changes the step's scale), on the 4 tuning valid articles, as the
# baseline's grid. The first job, every direction off, must reproduce the baseline grid's 66.12 (the code changed).
# usage: directions_grid.sh CORE
set -e
CORE=$1
cd /work/exp/code-scratch; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
D=/work/exp/joint/eval/directions-7200; mkdir -p $D
E="taskset -c $CORE python scripts/evaluate.py -m checkpoint=/work/exp/joint/stage1-at-7200/best.pt data.dir=../shared/data/wikitext-2 eval.progress_bar=false split=valid methods=[dyneval] eval.max_articles=4 eval.dyneval_lam=5e-4 hydra.sweep.dir=$D/grid"
$E eval.dyneval_eta=5e-5 > $D/grid-off.log 2>&1
# momentum: the step's sum over segments grows as 1/(1-β), so η is scaled down with it
$E eval.dyneval_momentum_beta=0.5 eval.dyneval_eta=2.5e-5,5e-5 > $D/grid-m05.log 2>&1
$E eval.dyneval_momentum_beta=0.8 eval.dyneval_eta=1e-5,2e-5 > $D/grid-m08.log 2>&1
$E eval.dyneval_eta=5e-5 eval.dyneval_delta_decay=0.05,0.2,0.5 > $D/grid-delta.log 2>&1
$E eval.dyneval_whiten=true eval.dyneval_eta=2.5e-5,5e-5,1e-4 > $D/grid-whiten.log 2>&1
python scripts/sweep_table.py $D/grid --sort-by dyneval > $D/grid.txt
date
