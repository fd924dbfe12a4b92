#!/usr/bin/env python
"""Print one perplexity table for a sweep of evaluations, best first.

    python scripts/evaluate.py -m checkpoint=PATH split=valid methods=[static,dyneval] eval.max_articles=10 \
        eval.dyneval_eta=0.001,0.002,0.004 eval.dyneval_lam=0.02,0.005,0.001
    python scripts/sweep_table.py runs/eval-sweep/<date>_<time> [--sort-by dyneval]
"""
import argparse

from dynlm.eval.sweep import format_sweep, sweep_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the sweep folder, runs/eval-sweep/<date>_<time>")
    parser.add_argument("--sort-by", default=None, help="method whose perplexity orders the rows (default: last)")
    args = parser.parse_args()
    print(format_sweep(sweep_rows(args.sweep_dir), args.sort_by))


if __name__ == "__main__":
    main()
