#!/usr/bin/env bash
# Reproduce the README's "Results": the model=small base model (stage 1, Adam recipe, 60 training articles held out
# for stage 2), its static perplexity on the full valid and test splits, Krause's dyneval grid tuned on the first
# valid articles for both adapted sets (every parameter, and the LSTM weights only), then tuned dyneval on the
# first articles of valid and test; then the best learned row: the cheap learned rule on the LSTM weights, from
# tuned dyneval, meta-trained by ES on the held-out articles, against tuned dyneval on the same articles.
# The two training runs are the recipes conf/experiment/small_adam_lm.yaml and small_cheap_es.yaml.
#
# The runs behind the README stopped on a time budget; this script replays them by their step counts (LM_STEPS,
# META_STEPS), so the result does not depend on the machine's speed (up to float rounding, which differs between
# CPUs and threads).
# The results of commit 2edb4ab (NT-ASGD base model, stage 2) come from that commit's version of this script.
# Every setting can be changed through the environment:
#   DATA=../shared/data/wikitext-2  OUT=runs/reproduce-small  MODEL=small  LM_STEPS=5212  HOLDOUT=60  META_STEPS=31
#   GRID_LR=3e-5,4e-5,5e-5,6e-5,7e-5,1e-4  GRID_LAM=0.001,0.002,0.003,0.005  (Krause's grid at L=5)
#   GRID_LR_LSTM=$GRID_LR,1.5e-4,2e-4,3e-4,5e-4  (LSTM weights only: Krause's grid, widened where its best η was the
#   largest)
#   GRID_ARTICLES=4  (tuning: the first 4 valid articles, 7,076 tokens)
#   VALID_ARTICLES=10  TEST_ARTICLES=7  (tuned dyneval: about the first 30,000 tokens of each; null: whole split)
#   LM_ARGS / META_ARGS / EVAL_ARGS: extra Hydra overrides for stage 1 / stage 2 / every evaluation (word-split).
set -euo pipefail

DATA=${DATA:-../shared/data/wikitext-2}
OUT=${OUT:-runs/reproduce-small}
MODEL=${MODEL:-small}
LM_STEPS=${LM_STEPS:-5212}
HOLDOUT=${HOLDOUT:-60}
META_STEPS=${META_STEPS:-31}
GRID_LR=${GRID_LR:-3e-5,4e-5,5e-5,6e-5,7e-5,1e-4}
GRID_LAM=${GRID_LAM:-0.001,0.002,0.003,0.005}
GRID_LR_LSTM=${GRID_LR_LSTM:-$GRID_LR,1.5e-4,2e-4,3e-4,5e-4}
GRID_ARTICLES=${GRID_ARTICLES:-4}
VALID_ARTICLES=${VALID_ARTICLES:-10}
TEST_ARTICLES=${TEST_ARTICLES:-7}
PYTHON=${PYTHON:-python}
read -r -a LM_EXTRA <<<"${LM_ARGS:-}"
read -r -a META_EXTRA <<<"${META_ARGS:-}"
read -r -a EVAL_EXTRA <<<"${EVAL_ARGS:-}"
CKPT="$OUT/lm/checkpoints/best.pt"

echo "== stage 1 (+experiment=small_adam_lm): model=$MODEL, Adam 3e-3 halved on plateaus, 10 streams, $LM_STEPS steps -> $OUT/lm"
"$PYTHON" scripts/train.py +experiment=small_adam_lm model="$MODEL" data.dir="$DATA" \
    data.meta_holdout_articles="$HOLDOUT" trainer.max_steps="$LM_STEPS" trainer.max_epochs=null trainer.max_time=null \
    trainer.progress_bar=false hydra.run.dir="$OUT/lm" "${LM_EXTRA[@]}"

# side_by_side NAME CHECKPOINT ARTICLES OVERRIDES...: valid and test at once, one thread each -> $OUT/NAME-<split>;
# ARTICLES "VALID TEST" limits each split to its first articles ("null null": the whole splits)
side_by_side() {
    local name=$1 checkpoint=$2 pids=() status=0 i split limits
    read -r -a limits <<<"$3"
    shift 3
    for i in 0 1; do
        split=$([ "$i" = 0 ] && echo valid || echo test)
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PYTHON" scripts/evaluate.py checkpoint="$checkpoint" split="$split" \
            eval.max_articles="${limits[$i]}" eval.progress_bar=false hydra.run.dir="$OUT/$name-$split" "$@" \
            "${EVAL_EXTRA[@]}" >"$OUT/$name-$split.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        split=$([ "$i" = 0 ] && echo valid || echo test)
        if ! wait "${pids[$i]}"; then
            echo "evaluation $name of $split failed; see $OUT/$name-$split.log" >&2
            status=1
        fi
    done
    return "$status"
}

echo "== static perplexity, whole valid and test splits -> $OUT/static-{valid,test}"
side_by_side static "$CKPT" "null null" methods=[static]

# The statistics are measured once, for every parameter, and cached: the grid's jobs read them.
echo "== gradient statistics (Krause's: 100 streams x 5 tokens, 200,000 train tokens)"
"$PYTHON" scripts/evaluate.py checkpoint="$CKPT" split=valid methods=[dyneval] eval.max_articles=1 \
    eval.progress_bar=false hydra.run.dir="$OUT/stats" "${EVAL_EXTRA[@]}" >"$OUT/stats.log" 2>&1

# best_setting DIR -> "eta lam" of the lowest dyneval perplexity among the sweep's jobs
best_setting() {
    "$PYTHON" - "$1" <<'BEST'
import json, pathlib, sys
runs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).rglob("results.json")]
ppl = lambda r: float(r["methods"]["dyneval"]["ppl"])  # "inf"/"nan" (strings) for a diverged setting
best = min(runs, key=lambda r: float("inf") if ppl(r) != ppl(r) else ppl(r))
print(best["dyneval"]["eta"], best["dyneval"]["lam"])
BEST
}

for set in all lstm; do
    dynamic=()
    grid_lr=$GRID_LR
    [ "$set" = lstm ] && dynamic=("eval.dynamic=[layers.*]") && grid_lr=$GRID_LR_LSTM
    echo "== Krause's grid ($set), first $GRID_ARTICLES valid articles -> $OUT/grid-$set"
    # two halves of the learning rates side by side, one thread each
    IFS=, read -r -a rates <<<"$grid_lr"
    half=$(( (${#rates[@]} + 1) / 2 ))
    first=$(IFS=,; echo "${rates[*]:0:$half}")
    second=$(IFS=,; echo "${rates[*]:$half}")
    pids=()
    half_no=0
    for part in "$first" "$second"; do
        half_no=$((half_no + 1))
        [ -n "$part" ] || continue
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PYTHON" scripts/evaluate.py -m checkpoint="$CKPT" split=valid \
            methods=[dyneval] eval.max_articles="$GRID_ARTICLES" eval.progress_bar=false "${dynamic[@]}" \
            eval.dyneval_eta="$part" eval.dyneval_lam="$GRID_LAM" hydra.sweep.dir="$OUT/grid-$set/part$half_no" \
            "${EVAL_EXTRA[@]}" >"$OUT/grid-$set-part$half_no.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "a grid job of $set failed; see $OUT/grid-$set-part*.log" >&2; exit 1; }
    done
    "$PYTHON" scripts/sweep_table.py "$OUT/grid-$set" --sort-by dyneval | tee "$OUT/grid-$set.txt"
    read -r eta lam <<<"$(best_setting "$OUT/grid-$set")"
    echo "== tuned dyneval ($set: eta $eta, lam $lam), first $VALID_ARTICLES valid and $TEST_ARTICLES test articles"
    side_by_side "tuned-$set" "$CKPT" "$VALID_ARTICLES $TEST_ARTICLES" methods=[static,dyneval] "${dynamic[@]}" \
        eval.dyneval_eta="$eta" eval.dyneval_lam="$lam"
done

# eta, lam: the LSTM weights' tuned setting (the loop's last set), where the learned rule starts
echo "== stage 2 (+experiment=small_cheap_es): the cheap learned rule on the LSTM weights from tuned dyneval" \
    "(eta $eta, lam $lam), ES over 100-segment windows of the held-out articles, $META_STEPS windows -> $OUT/meta"
"$PYTHON" scripts/train.py +experiment=small_cheap_es meta.lm_checkpoint="$CKPT" data.dir="$DATA" \
    rule.eta="$eta" rule.lam="$lam" trainer.max_steps="$META_STEPS" trainer.max_epochs=null trainer.max_time=null \
    trainer.progress_bar=false hydra.run.dir="$OUT/meta" "${META_EXTRA[@]}"

echo "== the learned rule against tuned dyneval, first $VALID_ARTICLES valid and $TEST_ARTICLES test articles"
side_by_side learned "$OUT/meta/checkpoints/best.pt" "$VALID_ARTICLES $TEST_ARTICLES" methods=[static,dyneval,learned]

"$PYTHON" - "$OUT" <<'SUMMARY'
import json, sys
out = sys.argv[1]
for split in ("valid", "test"):
    r = json.load(open(f"{out}/static-{split}/results.json"))
    print(f"{split}: static {r['methods']['static']['ppl']:.2f} ({r['num_tokens']} tokens, {r['num_articles']} articles)")
    for s, label in (("all", "every parameter"), ("lstm", "LSTM weights only")):
        t = json.load(open(f"{out}/tuned-{s}-{split}/results.json"))
        st, dy = t["methods"]["static"]["ppl"], t["methods"]["dyneval"]["ppl"]
        print(f"  first {t['num_articles']} articles ({t['num_tokens']} tokens): static {st:.2f} -> dyneval "
              f"({label}, eta {t['dyneval']['eta']}, lam {t['dyneval']['lam']}) {dy:.2f} ({100 * (dy / st - 1):+.1f}%)")
    r = json.load(open(f"{out}/learned-{split}/results.json"))
    me, dy = (float(r["methods"][k]["ppl"]) for k in ("learned", "dyneval"))
    print(f"  first {r['num_articles']} articles: the learned rule (rule=cheap, ES, LSTM weights) {me:.2f} against "
          f"its starting dyneval {dy:.2f} ({100 * (me / dy - 1):+.2f}%)")
SUMMARY
