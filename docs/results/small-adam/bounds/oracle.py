"""The per-article oracle over dyneval's (η, λ): run from the repository root, `python
docs/results/small-adam/bounds/oracle.py`. Reads the `reset-*-per_article.csv` files beside it (each article read
independently, so a setting can be chosen per article) and prints each setting's perplexity, the best setting per
article picked in hindsight, and their ratio to the tuned setting (η 7e-5, λ 1e-3)."""
import csv
import math
import re
from pathlib import Path

here = Path(__file__).resolve().parent
runs = {}
for path in sorted(here.glob("reset-*-per_article.csv")):
    with open(path) as f:
        runs[re.sub(r"^reset-|-per_article\.csv$", "", path.name)] = list(csv.DictReader(f))
tuned = runs["lr7e-05-lam0.001"]
tokens = sum(int(r["tokens"]) for r in tuned)


def ppl(nlls):
    return math.exp(sum(nlls) / tokens)


for name, rows in runs.items():
    print(f"{name}: {ppl(float(r['dyneval_nll']) for r in rows):.2f}")
best = [min(runs, key=lambda n: float(runs[n][i]["dyneval_nll"])) for i in range(len(tuned))]
oracle = ppl(float(runs[b][i]["dyneval_nll"]) for i, b in enumerate(best))
base = ppl(float(r["dyneval_nll"]) for r in tuned)
print(f"oracle per article over {len(runs)} settings: {oracle:.2f}; tuned {base:.2f}; ratio {oracle / base:.4f}")
for row, b in zip(tuned, best):
    print(f"  {row['title']}: {b}")
