#!/usr/bin/env python
"""Stage-1 throughput with 1 vs 2 gloo processes (CPU), side by side: one JSON line.

    python scripts/bench_scaling.py                          # model=small, WikiText-2, B=20, 40 steps (~5 min)
    python scripts/bench_scaling.py --model tiny --steps 60 --repeats 3

Each configuration is a real `torchrun --standalone --nproc_per_node=N scripts/train.py` run on the same
global batch (N processes read B/N streams each: strong scaling), with `--threads` OpenMP threads per
process. Runs alternate (1, 2, 1, 2, ...) so that a machine shared with other work slows both alike; the
figure of a run is its training tokens/s over every logging window but the first (warm-up), and each side
reports the median over repeats. Validation is kept out of the timing (and short: the valid and test splits
are cut to their first lines in a temporary copy of the data).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> str:
    return os.environ.get("DYNLM_WIKITEXT2", str(REPO.parent / "shared" / "data" / "wikitext-2"))


def short_eval_copy(src: Path, dst: Path, eval_lines: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "train.txt").symlink_to((src / "train.txt").resolve())
    for split in ("valid", "test"):
        with open(src / f"{split}.txt", encoding="utf-8", newline="") as f:
            head = [line for _, line in zip(range(eval_lines), f)]
        (dst / f"{split}.txt").write_text("".join(head), encoding="utf-8", newline="")
    return dst


def run(nproc: int, args, data: Path, run_dir: Path) -> float:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(REPO / "scripts" / "train.py"), f"model={args.model}", f"data.dir={data}",
        f"data.batch_size={args.batch_size}", f"data.bptt={args.bptt}", "trainer.max_epochs=null",
        f"trainer.max_steps={args.steps}", f"trainer.log_interval={args.log_interval}",
        f"trainer.eval_interval={10 * args.steps}", "trainer.progress_bar=false", "trainer.device=cpu",
        "trainer.dist_backend=gloo", "logger=none", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{nproc}-process run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]
    if not windows:
        sys.exit("too few logging windows: raise --steps or lower --log-interval")
    # tokens/s over the windows = total tokens / total time (each window holds the same number of steps)
    return len(windows) / sum(1.0 / w for w in windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--model", default="small", choices=["tiny", "small", "awd_lstm"])
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--bptt", type=int, default=70)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-interval", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per process")
    p.add_argument("--eval-lines", type=int, default=60)
    args = p.parse_args()
    src = Path(args.data_dir)
    if not (src / "train.txt").is_file():
        sys.exit(f"no WikiText-2 at {src}: pass --data-dir (a folder with train.txt/valid.txt/test.txt)")
    if args.batch_size % 2:
        sys.exit("--batch-size must be even (2 processes read half of the streams each)")
    results = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="dynlm-scaling-") as tmp:
        data = short_eval_copy(src, Path(tmp) / "data", args.eval_lines)
        for r in range(args.repeats):
            for nproc in (1, 2):
                results[nproc].append(run(nproc, args, data, Path(tmp) / f"run-{nproc}-{r}"))
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(json.dumps({
        "figure": "stage1_scaling_gloo", "model": args.model, "global_batch": args.batch_size, "bptt": args.bptt,
        "steps": args.steps, "threads_per_process": args.threads, "cpus": os.cpu_count(),
        "tokens_per_s_1proc": round(one, 1), "tokens_per_s_2proc": round(two, 1),
        "speedup_2_over_1": round(two / one, 3),
        "runs_1proc": [round(x, 1) for x in results[1]], "runs_2proc": [round(x, 1) for x in results[2]],
    }))


if __name__ == "__main__":
    main()
