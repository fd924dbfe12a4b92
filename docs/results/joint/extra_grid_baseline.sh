#!/bin/bash
# The baseline row's grid was first run on 6 settings (η 5e-5,7e-5,1e-4 × λ 1e-3,2e-3); its best sat at a corner, so the
# grid was widened to eval_row.sh's 12: this adds the other 6 to the same sweep folder.
set -e
cd /work/exp/code-joint; export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
D=/work/exp/joint/eval/baseline-7200
E="taskset -c 1 python scripts/evaluate.py -m checkpoint=/work/exp/joint/stage1-at-7200/best.pt data.dir=../shared/data/wikitext-2 eval.progress_bar=false split=valid methods=[dyneval] eval.max_articles=4"
$E eval.dyneval_eta=3e-5 eval.dyneval_lam=5e-4,0.001,0.002 hydra.sweep.dir=$D/grid > $D/grid2.log 2>&1
$E eval.dyneval_eta=5e-5,7e-5,1e-4 eval.dyneval_lam=5e-4 hydra.sweep.dir=$D/grid > $D/grid3.log 2>&1
python scripts/sweep_table.py $D/grid --sort-by dyneval > $D/grid.txt
python - $D <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
rows = [(json.load(open(p))["methods"]["dyneval"]["ppl"], json.load(open(p))["config"]["eval"]) for p in d.glob("grid/*/results.json")]
ppl, ev = min(rows, key=lambda r: r[0])
json.dump({"valid4_ppl": ppl, "eta": ev["dyneval_eta"], "lam": ev["dyneval_lam"], "settings_tried": len(rows)}, open(d / "chosen.json", "w"))
PY
cat $D/grid.txt $D/chosen.json
