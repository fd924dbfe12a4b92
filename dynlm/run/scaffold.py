"""The one run scaffold of both training stages: set-up, resume, logger, atomic checkpoints, keep-best
validation and the budget loop.

A stage is a `Task`: it builds its model and data, restores its own state from a checkpoint, and exports its
unit of work (`step`: an LM step in stage 1, a meta-training window in stage 2). Everything around that unit
is here, once:

    device, seeds -> resume path -> task (built, restored) -> per-rank seed, RNG restore -> config.yaml,
    logger, progress bar -> until the budget is spent: step, log every `log_interval`, validate every
    `eval_interval` (best.pt when better, then last.pt) -> a final validation.

A resume of a run that made its final validation, with a budget it has reached, does nothing (`_finished`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from omegaconf import DictConfig

from .. import dist
from ..config import DynlmError, check_ranges
from ..dynamic.rules import check_rule_config
from .allocator import keep_freed_memory_on
from .checkpoint import capture_rng, intact_checkpoint, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .jsonl import cut_after_step
from .logger import RunLogger
from .progress import Progress, TrainBar, budget_exhausted, limits_reached
from .setup import (
    LOG_FILE,
    asks_resume_here,
    check_run_dir,
    check_writable,
    clear_run_dir,
    config_dict,
    mark_owner,
    restore_rank_rng,
    resume_path,
    save_resolved_config,
    seed_everything,
    seed_rank,
    select_device,
)


class DivergedError(DynlmError, FloatingPointError):
    """A task's step found training diverging. Its message says what happened and what to change; the scaffold
    adds the checkpoint to resume from, the newest that passes the integrity check (`_resume_advice`)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, saying what is saved and how to resume (the scripts print it as one line). Still a
    KeyboardInterrupt: a sweep stops, and nothing that catches `Exception` takes it for a failed run."""


def _interrupted(step: int, saved: Optional[Tuple[Path, int]], run_dir: Path, eval_interval: int) -> str:
    if saved is None:
        return (f"interrupted (Ctrl-C) at step {step}, before the first checkpoint (every trainer.eval_interval="
                f"{eval_interval} steps): nothing to resume from; start over with the same command plus "
                f"trainer.overwrite=true hydra.run.dir={run_dir}")
    path, at = saved
    resume = "true" if path == run_dir / "checkpoints" / "last.pt" else str(path)
    return (f"interrupted (Ctrl-C) at step {step}; nothing saved is lost: {path} (step {at}) is intact, and a "
            f"resume from it replays the steps after it exactly: run the same command plus trainer.resume={resume} "
            f"hydra.run.dir={run_dir}")


class Task(Protocol):
    """What a training stage gives the scaffold."""

    stage: str  # "lm" | "meta": the checkpoint's `stage` and the progress bar's label
    cfg: DictConfig  # the effective config (stage 2 records the stage-1 model's)
    corpus: Any  # its tokenizer and data checksums go into every checkpoint
    diverged_fix: str  # what to change when training diverges ("lower optim.lr or trainer.clip")

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
    check_rule_config(cfg.rule)  # the rule's own keys: its schema's ranges
    check_writable(run_dir)  # and not at the first checkpoint
    tc = cfg.trainer
    device = select_device(tc.device)
    keep_freed_memory_on(device)
    seed_everything(tc.seed)
    ckpt_path = resume_path(tc.resume, run_dir)
    keep = [cfg.meta.lm_checkpoint] if cfg.stage == "meta" and cfg.meta.lm_checkpoint else []
    # trainer.resume=true without a checkpoint to resume (`resume_path`) starts the run over, as overwrite does
    starting_over = tc.overwrite or asks_resume_here(tc.resume)
    replaced = check_run_dir(run_dir, starting_over, keep) if ckpt_path is None else []
    if dist.is_main():
        stale = remove_stale_temporaries(run_dir / "checkpoints")
        if stale:
            dist.print0(f"removed {len(stale)} temporary file(s) that an interrupted checkpoint write left in "
                        f"{run_dir / 'checkpoints'}")
    resumed = load_checkpoint(ckpt_path, map_location="cpu") if ckpt_path is not None else None
    task = build(cfg, device, resumed, ckpt_path)
    if resumed is not None and _finished(tc, resumed, ckpt_path):  # after the task's checks of the command line
        return {"step": resumed["progress"]["step"], "finished": 1.0}
    clear_run_dir(run_dir, replaced)  # only once the task's own checks have passed
    mark_owner(run_dir)
    with dist.log_file(run_dir / LOG_FILE):
        return _train(cfg, run_dir, task, resumed, ckpt_path)


def _finished(tc, resumed: Dict[str, Any], path: Path) -> bool:
    """The resumed run made its final validation and has reached a limit of this command line's budget: nothing
    to do, and nothing is written (a second final validation would log twice and move NT-ASGD and the schedule)."""
    progress = Progress(**resumed["progress"])
    reached = limits_reached(tc, progress)
    if not (progress.finished and reached):
        return False
    dist.print0(f"nothing to do: the run of {path} is finished (step {progress.step}, {' and '.join(reached)} "
                f"reached, final validation done). To train it further, resume with a larger "
                f"{' and '.join(r.split('=')[0] for r in reached)}.")
    return True


def _resume_advice(run_dir: Path, resumed_from: Optional[Path]) -> str:
    """Where a diverged run goes on from: the newest checkpoint whose bytes are intact, or a fresh start."""
    last = run_dir / "checkpoints" / "last.pt"
    good = intact_checkpoint([last, run_dir / "checkpoints" / "best.pt", resumed_from])
    if good is None:
        return "then start the run again with trainer.overwrite=true (no intact checkpoint was written before)"
    return f"then resume from the last good checkpoint, {good} (trainer.resume={'true' if good == last else good})"


def _train(cfg: DictConfig, run_dir: Path, task: Task, resumed: Optional[Dict[str, Any]],
           ckpt_path: Optional[Path]) -> Dict[str, float]:
    tc = cfg.trainer
    seed_rank(tc.seed)  # the same weights everywhere (built with one seed), each rank its own dropout masks
    progress = Progress()
    saved: Optional[Tuple[Path, int]] = None  # the checkpoint a resume would start from, and its step
    if resumed is not None:  # a finished run goes on only with a larger budget (`_finished`): it is no more
        progress = Progress(**{**resumed["progress"], "finished": False})
        saved = (ckpt_path, progress.step)
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
        nonlocal saved
        state = task.checkpoint_state()  # collectives first, on every rank
        rng_ranks = dist.gather_objects(capture_rng())
        if dist.is_main():
            payload = {
                "stage": task.stage, "config": config_dict(task.cfg), "tokenizer": task.corpus.tokenizer.state_dict(),
                "data_checksums": dict(task.corpus.checksums), "progress": progress.__dict__,
                "rng": rng_ranks[0], "rng_ranks": rng_ranks, **state,
            }
            save_checkpoint(payload, run_dir / "checkpoints" / name)
        if name == "last.pt":
            saved = (run_dir / "checkpoints" / name, progress.step)

    def validate() -> float:
        begun = time.time()
        loss, metrics = task.validate(logger, progress.step)
        logger.log(metrics, progress.step)
        if not math.isfinite(loss):  # diverged weights: no checkpoint of them, the previous ones stay the good ones
            raise DivergedError(f"the valid loss became {loss} at step {progress.step}: {task.diverged_fix}")
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
        progress.finished = True  # in the checkpoints the final validation writes
        valid_loss = validate()
        dist.print0(done_message(task.stage, progress, valid_loss, run_dir / "checkpoints"))
        return task.result(progress, valid_loss)
    except DivergedError as e:
        raise type(e)(f"{e}, {_resume_advice(run_dir, ckpt_path)}.") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(progress.step, saved, run_dir, tc.eval_interval)) from None
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


__all__ = ["DivergedError", "Task", "TaskBuilder", "TrainingInterrupted", "done_message", "run"]
