"""The one run scaffold of both training stages: set-up, resume, logger, atomic checkpoints, keep-best
validation and the budget loop.

A stage is a `Task`: it builds its model and data, restores its own state from a checkpoint, and exports its
unit of work (`step`: an LM step in stage 1, a meta-training window in stage 2). Everything around that unit
is here, once:

    device, seeds -> resume path -> task (built, restored) -> per-rank seed, RNG restore -> config.yaml,
    logger, progress bar -> until the budget is spent: step, log every `log_interval`, validate every
    `eval_interval` (best.pt when better, then last.pt) -> a final validation.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from omegaconf import DictConfig

from .. import dist
from ..config import check_ranges
from .checkpoint import capture_rng, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .jsonl import cut_after_step
from .logger import RunLogger
from .progress import Progress, TrainBar, budget_exhausted
from .setup import LOG_FILE, check_run_dir, clear_run_dir, config_dict, mark_owner, restore_rank_rng, resume_path, \
    save_resolved_config, seed_everything, seed_rank, select_device


class Task(Protocol):
    """What a training stage gives the scaffold."""

    stage: str  # "lm" | "meta": the checkpoint's `stage` and the progress bar's label
    cfg: DictConfig  # the effective config (stage 2 records the stage-1 model's)
    corpus: Any  # its tokenizer and data checksums go into every checkpoint

    def step(self, progress: Progress) -> bool:
        """One unit of work; advances `progress.tokens/position/epoch`. True asks for a log record now."""

    def metrics(self, progress: Progress, seconds: float) -> Dict[str, float]:
        """The scalars to log for the steps since the previous call, which took `seconds`."""

    def postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        """The progress bar's summary of `metrics`."""

    def steps_for_epochs(self, progress: Progress, epochs: int) -> float:
        """The step at which `epochs` epochs will be done, seen from `progress` (the bar's total under
        trainer.max_epochs): exact, or the expected number where step lengths are random."""

    def validate(self, logger: RunLogger, step: int) -> Tuple[float, Dict[str, float]]:
        """`(loss that selects best.pt, scalars to log)`; every rank gets the same loss."""

    def checkpoint_state(self) -> Dict[str, Any]:
        """The stage's part of a checkpoint. Called on every rank (it may gather per-stream states)."""

    def result(self, progress: Progress, valid_loss: float) -> Dict[str, float]:
        """What `train` returns after the final validation."""


TaskBuilder = Callable[[DictConfig, torch.device, Optional[Dict[str, Any]], Optional[Path]], Task]


def run(cfg: DictConfig, run_dir: str | Path, build: TaskBuilder) -> Dict[str, float]:
    """Train the task `build(cfg, device, resumed checkpoint or None, its path)` makes, in `run_dir`."""
    run_dir = Path(run_dir)
    check_ranges(cfg)  # before any work: a non-finite learning rate would only skip every update
    tc = cfg.trainer
    device = select_device(tc.device)
    seed_everything(tc.seed)
    ckpt_path = resume_path(tc.resume, run_dir)
    keep = [cfg.meta.lm_checkpoint] if cfg.stage == "meta" and cfg.meta.lm_checkpoint else []
    replaced = check_run_dir(run_dir, tc.overwrite, keep) if ckpt_path is None else []
    if dist.is_main():
        stale = remove_stale_temporaries(run_dir / "checkpoints")
        if stale:
            dist.print0(f"removed {len(stale)} temporary file(s) that an interrupted checkpoint write left in "
                        f"{run_dir / 'checkpoints'}")
    resumed = load_checkpoint(ckpt_path, map_location="cpu") if ckpt_path is not None else None
    task = build(cfg, device, resumed, ckpt_path)
    clear_run_dir(run_dir, replaced)  # only once the task's own checks have passed
    mark_owner(run_dir)
    with dist.log_file(run_dir / LOG_FILE):
        return _train(cfg, run_dir, task, resumed, ckpt_path)


def _train(cfg: DictConfig, run_dir: Path, task: Task, resumed: Optional[Dict[str, Any]],
           ckpt_path: Optional[Path]) -> Dict[str, float]:
    tc = cfg.trainer
    seed_rank(tc.seed)  # the same weights everywhere (built with one seed), each rank its own dropout masks
    progress = Progress()
    if resumed is not None:
        progress = Progress(**resumed["progress"])
        restore_rank_rng(resumed, tc.seed, progress.step)
        dist.print0(f"resumed from {ckpt_path} at step {progress.step}")
        if dist.is_main():  # the steps after the checkpoint are replayed: their old records go
            for log in ("metrics.jsonl", "valid_article.jsonl"):
                dropped, torn = cut_after_step(run_dir / log, progress.step)
                if dropped or torn:
                    dist.print0(f"{log}: dropped {dropped} record(s) after step {progress.step}"
                                + (f" and {torn} torn line(s)" if torn else ""))

    save_resolved_config(task.cfg, run_dir)
    dist.print0(f"stage {task.stage} in {run_dir}: messages in {LOG_FILE}, scalars in metrics.jsonl")
    logger = RunLogger(run_dir, task.cfg.logger, config_dict(task.cfg))
    bar = TrainBar(tc, progress, task.steps_for_epochs, "train" if task.stage == "lm" else task.stage,
                   tc.progress_bar)

    def checkpoint(name: str) -> None:
        state = task.checkpoint_state()  # collectives first, on every rank
        rng_ranks = dist.gather_objects(capture_rng())
        if not dist.is_main():
            return
        payload = {
            "stage": task.stage, "config": config_dict(task.cfg), "tokenizer": task.corpus.tokenizer.state_dict(),
            "data_checksums": dict(task.corpus.checksums), "progress": progress.__dict__,
            "rng": rng_ranks[0], "rng_ranks": rng_ranks, **state,
        }
        save_checkpoint(payload, run_dir / "checkpoints" / name)

    def validate() -> float:
        begun = time.time()
        loss, metrics = task.validate(logger, progress.step)
        logger.log(metrics, progress.step)
        better = loss < progress.best_valid_loss
        dist.print0(f"step {progress.step}: valid loss {loss:.4f}, ppl {math.exp(loss):.2f}"
                    + (" (best so far: best.pt)" if better else ""))
        # both clocks now, as the checkpoints below record them: a resumed run's budget goes on from here
        progress.valid_seconds += dist.broadcast_float(time.time() - begun)
        progress.elapsed = dist.broadcast_float(time.time() - started)
        if better:
            progress.best_valid_loss = loss
            checkpoint("best.pt")
        checkpoint("last.pt")
        return loss

    def done() -> bool:
        return budget_exhausted(tc, progress)

    started = time.time() - progress.elapsed
    window_start = time.time()
    steps_this_session = 0
    try:
        while not done():
            dist.inject_failure(tc.fail_at_step, progress.step)
            force_log = task.step(progress)
            progress.step += 1
            steps_this_session += 1
            progress.elapsed = dist.broadcast_float(time.time() - started)  # rank 0's clock: stop together
            postfix = None
            # step 1 too: the starting loss is on the bar (and in metrics.jsonl) at once, not after log_interval
            if progress.step % tc.log_interval == 0 or progress.step == 1 or force_log or done():
                metrics = task.metrics(progress, max(time.time() - window_start, 1e-9))
                logger.log(metrics, progress.step)
                postfix = task.postfix(metrics)
                window_start = time.time()
            bar.advance(progress, postfix)
            if progress.step % tc.eval_interval == 0 and not done():
                validate()
            if tc.stop_after_steps is not None and steps_this_session >= tc.stop_after_steps and not done():
                checkpoint("last.pt")
                dist.print0(f"stopping after {steps_this_session} steps as asked (trainer.stop_after_steps)")
                return {"step": progress.step, "stopped": 1.0}
        bar.close()  # before the final validation, which has its own bar: the training bar keeps its own time
        valid_loss = validate()
        dist.print0(done_message(task.stage, progress, valid_loss, run_dir / "checkpoints"))
        return task.result(progress, valid_loss)
    finally:
        bar.close()
        logger.finish()


# what each stage's validation loss is, for the final message
VALID_LABELS = {"lm": "valid ppl", "meta": "adaptive valid ppl"}  # stage 2: its quick validation


def done_message(stage: str, progress: Progress, valid_loss: float, checkpoints: Path) -> str:
    """The last line of a finished run: where it stopped, its final and best validation, and where its
    checkpoints are."""
    label = VALID_LABELS.get(stage, "valid ppl")
    return (f"done: step {progress.step}, epoch {progress.epoch}, {label} {math.exp(valid_loss):.2f}, best "
            f"{math.exp(progress.best_valid_loss):.2f}, {progress.elapsed:.0f}s; checkpoints: {checkpoints}/best.pt "
            "(best valid), last.pt (latest)")


__all__ = ["Task", "TaskBuilder", "done_message", "run"]
