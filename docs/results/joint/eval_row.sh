#!/bin/bash
# One row of the #25 experiment: Krause's grid (a 12-setting part of it) on the first 4 valid articles (grid ->
# chosen.json), then the whole valid split (valid), then, for the rows selected on valid, the whole test split (test).
# usage: [CODE=worktree] [EVAL_EXTRA=overrides] eval_row.sh ROW CHECKPOINT CORE PARTS  (PARTS: any of grid (-> chosen.json), valid (whole valid), test (whole test), e.g. grid+valid)
set -e
ROW=$1 CKPT=$2 CORE=$3 PARTS=$4
cd ${CODE:-/work/exp/code-joint}; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
D=/work/exp/joint/eval/$ROW; mkdir -p $D
E="taskset -c $CORE python scripts/evaluate.py -m checkpoint=$CKPT data.dir=../shared/data/wikitext-2 eval.progress_bar=false $EVAL_EXTRA"
if [[ $PARTS == *grid* ]]; then
$E split=valid 'methods=[dyneval]' eval.max_articles=4 eval.dyneval_eta=3e-5,5e-5,7e-5,1e-4 eval.dyneval_lam=5e-4,0.001,0.002 \
   hydra.sweep.dir=$D/grid > $D/grid.log 2>&1
python scripts/sweep_table.py $D/grid --sort-by dyneval > $D/grid.txt
python - $D <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
rows = [(json.load(open(p))["methods"]["dyneval"]["ppl"], json.load(open(p))["config"]["eval"]) for p in d.glob("grid/*/results.json")]
ppl, ev = min(rows, key=lambda r: r[0])
json.dump({"valid4_ppl": ppl, "eta": ev["dyneval_eta"], "lam": ev["dyneval_lam"], "settings_tried": len(rows)}, open(d / "chosen.json", "w"))
PY
fi
if [[ $PARTS == *valid* ]]; then
ETA=$(python -c "import json;print(json.load(open('$D/chosen.json'))['eta'])")
LAM=$(python -c "import json;print(json.load(open('$D/chosen.json'))['lam'])")
${E/ -m/} split=valid 'methods=[static,dyneval]' eval.dyneval_eta=$ETA eval.dyneval_lam=$LAM hydra.run.dir=$D/valid > $D/valid.log 2>&1
fi
if [[ $PARTS == *test* ]]; then
ETA=$(python -c "import json;print(json.load(open('$D/chosen.json'))['eta'])")
LAM=$(python -c "import json;print(json.load(open('$D/chosen.json'))['lam'])")
${E/ -m/} split=test 'methods=[static,dyneval]' eval.dyneval_eta=$ETA eval.dyneval_lam=$LAM hydra.run.dir=$D/test > $D/test.log 2>&1
fi
date
