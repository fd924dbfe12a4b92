"""Stage 2: train the meta-learner φ, θ0 with it (`meta.train_static`), or θ0 alone with a fixed rule in the loop
(joint training, from a stage-1 checkpoint or from scratch: `meta_start.py`) (docs/design.md §4).

B article streams are read in parallel, each with its own dynamic weights. A window is K segments of L
tokens; each segment is evaluated first and then used for an update, and the meta-loss is the mean segment
loss over the window. The unit of work is `meta_window.meta_window`, with the estimator of the meta-gradient
`meta.estimator` names (`estimators.py`); the loop around it is the run scaffold's (`run/scaffold.py`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from .. import dist
from ..config import ConfigValueError, MetaConfig
from ..data import MetaStreams
from ..dynamic.grad_stats import GradStats
from ..dynamic.reading_state import ReadingState, fresh_state
from ..dynamic.rules import LEARNED, build_rule, check_rule_config, rule_names
from ..model import LMState, static_weights
from ..run.checkpoint import load_weights
from ..run.logger import RunLogger
from ..run.progress import Progress
from ..run.scaffold import DivergedError, run
from .estimators import ESTIMATORS, build_estimator
from .gradstat_refresh import refresh_grad_stats, refresh_interval
from .meta_learning import MetaLearning
from .meta_start import meta_split, meta_start
from .meta_validation import quick_adaptive_valid
from .meta_window import meta_window
from .window_report import WindowReport

WindowHook = Callable[[ReadingState, int], ReadingState]


class MetaDivergedError(DivergedError):
    """Too many skipped windows in a row: the message says what to change (the scaffold, what to resume)."""


def next_window(ml: MetaLearning, streams: MetaStreams, position: int, state: ReadingState, static_lm: LMState,
                seed: int) -> Tuple[ReadingState, LMState, WindowReport]:
    """The window at `position` of a run seeded with `seed`. The window's seed (ES draws its directions from it)
    is the run's and the position's: the same on every rank, fresh at every window, the same again on resume."""
    return meta_window(ml, streams, position, state, static_lm, seed * 1_000_003 + position)


def build_meta_learning(mc: DictConfig, rule: DictConfig, model: nn.Module, names: List[str], stats: GradStats
                        ) -> MetaLearning:
    """The learned rule `rule` describes (at its initialisation), its estimator, and Adam on φ and on the
    parameters of θ0 the estimator trains (with `meta.train_static`: all of them); only those require gradients."""
    device = next(model.parameters()).device
    learner = build_rule(rule, names, stats).to(device)
    estimator = build_estimator(mc)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}  # θ0*, the stage-1 weights
    static = estimator.static_parameters(model)
    model.requires_grad_(False)
    for p in static:
        p.requires_grad_(True)
    groups = [{"params": list(learner.parameters()), "lr": mc.learner_lr}]
    if static:
        groups.append({"params": static, "lr": mc.static_lr})
    return MetaLearning(mc, model, learner, torch.optim.Adam(groups), names, stats, anchor, estimator)


def fresh_window_state(ml: MetaLearning, streams: int) -> Tuple[ReadingState, LMState]:
    """Every stream at θ0 with a zero state: the adaptive reader's, and the static model's own (h, c)."""
    theta0 = static_weights(ml.model, ml.names)
    # learner state `[1, *shape]` (broadcast over streams, like the reading loop): a bare `[*shape]` breaks resets
    state = fresh_state(ml.model, theta0, streams,
                        ml.learner.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
    return state, ml.model.init_state(streams)


def check_estimator(mc: DictConfig, rule: str, learned: bool) -> None:
    """The estimator exists and can train what the run asks: φ of a learned `rule`, θ0 with `meta.train_static`."""
    if mc.estimator not in ESTIMATORS:
        raise ConfigValueError(f"meta.estimator={mc.estimator!r}: use bptt (truncated meta-BPTT), es (evolution "
                               "strategies) or first_order (θ0's first-order joint gradient)")
    if not learned and not mc.train_static:
        raise ConfigValueError(f"stage=meta trains a learned rule or θ0, and rule={rule} has nothing to train: use "
                               + " or ".join(f"rule={n}" for n in rule_names(learned=True))
                               + f", or meta.train_static=true to train θ0 with rule={rule} in the loop")
    if not learned and mc.learner_lr != MetaConfig.learner_lr:
        raise ConfigValueError(f"meta.learner_lr={mc.learner_lr} has no effect with rule={rule}, which has nothing to "
                               "learn: remove it (meta.static_lr is θ0's learning rate)")
    if mc.estimator == "es" and (mc.train_static or mc.second_order):
        key = "meta.train_static" if mc.train_static else "meta.second_order"
        raise ConfigValueError(f"{key}=true needs meta.estimator=bptt: the ES estimator perturbs the learner φ only "
                               "and takes no gradients through the updates")
    if mc.estimator == "first_order":
        if not mc.train_static or mc.second_order:
            key = "meta.second_order=true" if mc.train_static else "meta.train_static=false"
            raise ConfigValueError(f"meta.estimator=first_order trains θ0 to first order: {key} is not that; set "
                                   "meta.train_static=true meta.second_order=false, or use meta.estimator=bptt")
        if learned:
            raise ConfigValueError(f"meta.estimator=first_order trains θ0 only, and rule={rule} has parameters to "
                                   "learn: use rule=dyneval, or meta.estimator=bptt to train φ and θ0 together")


class MetaTask:
    """Stage 2 as a task of the run scaffold."""

    stage = "meta"
    diverged_fix = "lower meta.learner_lr or rule.eta"

    def __init__(self, cfg: DictConfig, device: torch.device, resumed: Optional[Dict[str, Any]],
                 path: Optional[Path], on_window: Optional[WindowHook] = None):
        check_estimator(cfg.meta, cfg.rule.name, check_rule_config(cfg.rule).learned)
        start = meta_start(cfg, device, resumed, path)  # a stage-1 checkpoint, the resumed one, or from scratch
        self.cfg, self.corpus = start.cfg, start.corpus
        self.on_window, self.device = on_window, device
        mc = self.cfg.meta
        self.streams = MetaStreams(self.corpus.splits[mc.split], mc.batch_size, mc.seg_len, dist.rank(),
                                   dist.world_size())
        self.ml = build_meta_learning(mc, self.cfg.rule, start.model, start.names, start.stats)
        self.refresh = refresh_interval(mc, self.cfg.rule.name, self.ml.learner)
        self.state, self.static_lm = fresh_window_state(self.ml, self.streams.num_local_streams)
        if resumed is not None:
            self._restore(resumed, path)
        self._tokens = 0
        self._last: Optional[WindowReport] = None
        self._skipped_in_a_row = 0

    def _restore(self, ckpt: Dict[str, Any], path: Path) -> None:
        ml, device, b = self.ml, self.device, self.streams.num_streams
        load_weights(ml.model, ckpt["model"], source=f"checkpoint {path}")
        ml.learner.load_state_dict(ckpt["meta_learner"])
        ml.optimizer.load_state_dict(ckpt["meta_optimizer"])
        ml.anchor = {n: t.to(device) for n, t in ckpt["anchor"].items()}
        # Saved in global stream order (gathered from every rank): any number of ranks takes its own rows.
        saved = ReadingState.from_dict(ckpt["reading_state"], "cpu")
        if saved.batch_size == b:
            self.state = ReadingState.from_dict(ckpt["reading_state"], device, dist.shard_streams)
        else:
            dist.print0(f"the checkpoint's reading state has {saved.batch_size} streams, not meta.batch_size="
                        f"{b}: streams restart from θ0")
        if ckpt.get("static_lm") is not None and ckpt["static_lm"][0][0].shape[0] == b:
            self.static_lm = [(dist.shard_streams(h).to(device), dist.shard_streams(c).to(device))
                              for h, c in ckpt["static_lm"]]

    def step(self, progress: Progress) -> bool:
        if self.on_window is not None:
            self.state = self.on_window(self.state, progress.step)
        self.state, self.static_lm, report = next_window(self.ml, self.streams, progress.position, self.state,
                                                         self.static_lm, int(self.cfg.trainer.seed))
        if self.refresh and (progress.step + 1) % self.refresh == 0:  # before this step's checkpoint, which stores them
            refresh_grad_stats(self.ml, self.corpus.splits["train"], progress.step + 1)
        if report.skipped:
            dist.print0(f"step {progress.step}: non-finite meta-gradient or weights; update skipped, "
                        f"{report.reset_streams} stream(s) reset to θ0")
        progress.position += self.ml.meta.window
        progress.tokens += report.tokens
        progress.epoch = progress.position // max(self.streams.segments_per_epoch, 1)
        self._tokens += report.tokens
        self._last = report
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if report.skipped else 0
        if self._skipped_in_a_row >= self.ml.meta.max_skipped_windows:
            raise MetaDivergedError(
                f"the last {self._skipped_in_a_row} windows (to step {progress.step + 1}) were all skipped: non-finite "
                "meta-gradients or dynamic weights, so meta-training is diverging (meta.max_skipped_windows sets how "
                f"many skipped windows in a row stop a run): {self.diverged_fix}"
            )
        return bool(report.skipped)

    def metrics(self, progress: Progress, seconds: float) -> Dict[str, float]:
        r = self._last
        out = {
            "meta/loss": r.meta_loss, "meta/static_loss": r.static_loss,
            "meta/improvement": r.static_loss - r.meta_loss, "meta/skipped_updates": r.skipped,
            "meta/tokens_per_s": self._tokens / seconds, "meta/tokens": progress.tokens,
        }
        out.update({f"meta/{k}": v for k, v in r.diag.items()})
        self._tokens = 0
        return out

    def postfix(self, m: Dict[str, float]) -> Dict[str, str]:
        return {"loss": f"{m['meta/loss']:.3f}", "gain": f"{m['meta/improvement']:+.3f}"}

    def steps_for_epochs(self, p: Progress, epochs: int) -> float:
        # a step reads meta.window segments; epoch e ends at segment e * segments_per_epoch
        per_epoch = max(self.streams.segments_per_epoch, 1)
        return p.step + max(math.ceil((epochs * per_epoch - p.position) / self.ml.meta.window), 0)

    def validate(self, logger: RunLogger, step: int):
        ml = self.ml
        metrics = quick_adaptive_valid(ml.model, ml.learner, ml.stats, ml.names, self.corpus, self.cfg,
                                       logger=logger, step=step)
        # Every rank evaluates the same articles with the same weights; rank 0's loss decides for all.
        return dist.broadcast_float(metrics[f"valid/{LEARNED}/loss"]), metrics

    def checkpoint_state(self) -> Dict[str, Any]:
        ml = self.ml
        return {
            "model": {n: p.detach().cpu() for n, p in ml.model.named_parameters()},
            "anchor": {n: t.cpu() for n, t in ml.anchor.items()},
            "dynamic_names": ml.names,
            "grad_stats": ml.stats.state_dict(),
            "meta_learner": {k: v.cpu() for k, v in ml.learner.state_dict().items()},
            "meta_optimizer": ml.optimizer.state_dict(),
            "reading_state": self.state.to_dict(dist.gather_streams),
            "static_lm": [(dist.gather_streams(h), dist.gather_streams(c)) for h, c in self.static_lm],
        }

    def result(self, progress: Progress, valid_loss: float) -> Dict[str, float]:
        return {"step": progress.step, f"valid/{LEARNED}/loss": valid_loss,
                f"valid/{LEARNED}/ppl": math.exp(valid_loss)}


def train_meta(cfg: DictConfig, run_dir: str | Path, on_window: Optional[WindowHook] = None) -> Dict[str, float]:
    """`on_window(state, step)` may replace the reading state before each window (fault injection in tests)."""
    return run(cfg, run_dir, lambda c, device, resumed, path: MetaTask(c, device, resumed, path, on_window))


__all__ = ["MetaTask", "build_meta_learning", "check_estimator", "fresh_window_state", "meta_split", "next_window",
           "train_meta"]
