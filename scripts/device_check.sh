#!/usr/bin/env bash
# One check of a GPU machine, in at most 8 minutes (DEVICE_CHECK_BUDGET seconds, 470 by default):
#   cuda_tests  tests/test_cuda.py (the per-stream LSTM, static and dyneval reading and the meta-gradient on the GPU
#               against the CPU)
#   bench       scripts/bench.py on CUDA: every figure at full size, 3 repetitions (JSON lines in bench.jsonl)
#   stage1, stage2, evaluate   a tiny stage 1 -> stage 2 -> evaluation (static, dyneval, meta) on trainer.device=auto
#   torchrun    stage 1 under torchrun: 1 process with NCCL (2 when 2 GPUs exist)
# Each part has its own timeout (cut to what is left of the budget); its log is <part>.log. summary.json holds every
# part's status (pass | fail | skip) and seconds, and what was measured; the exit status is 1 when a part failed.
#
# Without CUDA the GPU parts are skipped with a message; the pipeline runs on the CPU with tiny step counts, and
# torchrun with one gloo process (so CI keeps the script working: tests/test_device_check.py).
#
#   bash scripts/device_check.sh [RESULTS]        RESULTS: the argument, else $OUT, else runs/device_check
#   DATA=../shared/data/wikitext-2                a WikiText folder (its first lines are read); default: that folder
#                                                 when it exists, else a synthetic corpus in the WikiText layout
#   DEVICE_CHECK_QUICK=1                          tiny step counts on a GPU too
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-runs/device_check}}
BUDGET=${DEVICE_CHECK_BUDGET:-470}
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
START=$(date +%s)
mkdir -p "$RESULTS"
rm -rf "$RESULTS/data" "$RESULTS/lm" "$RESULTS/meta" "$RESULTS/eval" "$RESULTS/torchrun"
: >"$RESULTS/parts.jsonl"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())") || { echo "error: python cannot import torch" >&2; exit 1; }
QUICK=${DEVICE_CHECK_QUICK:-0}
if [ "$GPUS" = 0 ]; then QUICK=1; fi

# record NAME STATUS SECONDS NOTE
record() {
    "$PYTHON" -c 'import json, sys; n, s, t, note = sys.argv[1:]
print(json.dumps({"name": n, "status": s, "seconds": round(float(t), 1), "note": note,
                  "log": n + ".log" if s != "skip" and t != "0" else None}))' \
        "$@" >>"$RESULTS/parts.jsonl"
    echo "== $1: $2 (${3%.*}s) $4"
}

skip() {  # skip NAME REASON: a part that does not apply on this machine
    record "$1" skip 0 "$2"
}

# part NAME TIMEOUT COMMAND...: run it with TIMEOUT seconds at most (less when the budget is nearly spent)
part() {
    local name=$1 limit=$2 left rc began ended
    shift 2
    left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        record "$name" fail 0 "not run: the check's budget of ${BUDGET}s is spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit}s): $*"
    began=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    ended=$(date +%s.%N)
    local seconds
    seconds=$("$PYTHON" -c "print($ended - $began)")
    if [ "$rc" = 0 ]; then
        record "$name" pass "$seconds" ""
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record "$name" fail "$seconds" "timed out after ${limit}s"
    else
        record "$name" fail "$seconds" "exit status $rc: see $name.log"
    fi
}

# --- data: the first lines of a WikiText folder, else a synthetic corpus in its layout ---------------------------
DATA=${DATA:-../shared/data/wikitext-2}
"$PYTHON" - "$DATA" "$RESULTS/data" <<'EOF' || { echo "error: could not write the check's data" >&2; exit 1; }
import random, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
sizes = {"train": 3000, "valid": 400, "test": 400}
if all((src / f"{s}.txt").is_file() for s in sizes):
    for s, n in sizes.items():
        with open(src / f"{s}.txt", encoding="utf-8", newline="") as f:
            (dst / f"{s}.txt").write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")
    print(f"data: the first lines of {src}")
else:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(499)] + ["<unk>"]
    for s, articles in (("train", 40), ("valid", 4), ("test", 4)):
        lines = [" "]
        for a in range(articles):
            lines += [f" = {s} article {a} = ", " "]
            for _ in range(4):
                lines += [" " + " ".join(rng.choice(vocab) for _ in range(rng.randint(40, 120))) + " ", " "]
        (dst / f"{s}.txt").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    print(f"data: a synthetic corpus ({src} not found)")
EOF

if [ "$QUICK" = 1 ]; then
    LM_STEPS=6 META_STEPS=2 META_EVAL=2 GRADSTAT=500 ARTICLES=1 RUN_STEPS=4
else
    LM_STEPS=60 META_STEPS=10 META_EVAL=5 GRADSTAT=5000 ARTICLES=2 RUN_STEPS=20
fi
LM=(model=tiny "data.dir=$RESULTS/data" data.batch_size=8 data.bptt=35 trainer.max_epochs=null
    trainer.valid_max_tokens=3000 trainer.progress_bar=false trainer.overwrite=true)

# --- the parts ----------------------------------------------------------------------------------------------------
if [ "$GPUS" -gt 0 ]; then
    part cuda_tests 90 "$PYTHON" -m pytest -q -rs tests/test_cuda.py
    part bench 180 sh -c "exec \"$PYTHON\" scripts/bench.py --device cuda --reps 3 >\"$RESULTS/bench.jsonl\""
else
    skip cuda_tests "no CUDA GPU: tests/test_cuda.py needs one (the CPU suite is CI's: pytest)"
    skip bench "no CUDA GPU: the CPU figures are scripts/bench.py's own (--quick in CI)"
fi

part stage1 60 "$PYTHON" scripts/train.py "${LM[@]}" "trainer.max_steps=$LM_STEPS" \
    "trainer.eval_interval=$((LM_STEPS / 2))" "hydra.run.dir=$RESULTS/lm"
part stage2 60 "$PYTHON" scripts/train.py stage=meta "meta.lm_checkpoint=$RESULTS/lm/checkpoints/best.pt" \
    "data.dir=$RESULTS/data" meta.batch_size=4 meta.seg_len=5 meta.window=4 "meta.gradstat_tokens=$GRADSTAT" \
    meta.valid_articles=1 meta.valid_max_tokens=1000 trainer.max_epochs=null "trainer.max_steps=$META_STEPS" \
    "trainer.eval_interval=$META_EVAL" trainer.log_interval=1 trainer.progress_bar=false \
    trainer.overwrite=true "hydra.run.dir=$RESULTS/meta"
part evaluate 60 "$PYTHON" scripts/evaluate.py "checkpoint=$RESULTS/meta/checkpoints/best.pt" split=valid \
    "methods=[static,dyneval,learned]" "eval.max_articles=$ARTICLES" eval.progress_bar=false "hydra.run.dir=$RESULTS/eval"

if [ "$GPUS" -gt 0 ]; then
    PROCS=$([ "$GPUS" -ge 2 ] && echo 2 || echo 1) BACKEND=nccl
else
    PROCS=1 BACKEND=gloo
    echo "no CUDA GPU: torchrun runs one gloo process on the CPU instead of NCCL"
fi
part torchrun 60 "$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$PROCS" scripts/train.py \
    "${LM[@]}" "data.batch_size=$((4 * PROCS))" "trainer.max_steps=$RUN_STEPS" "trainer.eval_interval=$RUN_STEPS" \
    "trainer.dist_backend=$BACKEND" "hydra.run.dir=$RESULTS/torchrun"

# --- summary.json -------------------------------------------------------------------------------------------------
"$PYTHON" - "$RESULTS" "$BUDGET" "$START" "$PROCS" "$BACKEND" <<'EOF'
import json, platform, sys, time
from pathlib import Path
import torch
results, budget, start, procs, backend = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
parts = [json.loads(x) for x in (results / "parts.jsonl").read_text().splitlines() if x.strip()]

def jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

def last(records, key):
    found = [r for r in records if key in r]
    return found[-1] if found else {}

lm, meta = jsonl(results / "lm" / "metrics.jsonl"), jsonl(results / "meta" / "metrics.jsonl")
ev = json.loads((results / "eval" / "results.json").read_text()) if (results / "eval" / "results.json").is_file() else {}
measured = {
    "bench": jsonl(results / "bench.jsonl"),
    "stage1": {"step": last(lm, "valid/ppl").get("step"), "valid_ppl": last(lm, "valid/ppl").get("valid/ppl"),
               "tokens_per_s": last(lm, "train/tokens_per_s").get("train/tokens_per_s")},
    "stage2": {"step": last(meta, "valid/learned/ppl").get("step"),
               "valid_learned_ppl": last(meta, "valid/learned/ppl").get("valid/learned/ppl"),
               "tokens_per_s": last(meta, "meta/tokens_per_s").get("meta/tokens_per_s")},
    "evaluate": {m: v.get("ppl") for m, v in ev.get("methods", {}).items()},
    "torchrun": {"processes": procs, "backend": backend,
                 "tokens_per_s": last(jsonl(results / "torchrun" / "metrics.jsonl"), "train/tokens_per_s").get(
                     "train/tokens_per_s")},
}
failed = [p["name"] for p in parts if p["status"] == "fail"]
summary = {
    "passed": not failed, "failed": failed, "seconds": round(time.time() - start, 1), "budget_s": budget,
    "machine": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                "host": platform.node()},
    "parts": parts, "measured": measured,
}
(results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
print(f"device check: {'passed' if not failed else 'FAILED: ' + ', '.join(failed)} in {summary['seconds']:.0f}s; "
      f"{results / 'summary.json'}")
sys.exit(1 if failed else 0)
EOF
