"""Stage 2: train the meta-learner φ by truncated meta-BPTT over checkpointed segments (DESIGN §3).

B article streams are read in parallel, each with its own dynamic weights. A window is K segments of L
tokens; each segment is evaluated first and then used for an update, and the meta-loss is the mean segment
loss over the window. After Adam steps φ (and θ0 under EWC when `meta.train_static`), the reading state is
detached: the truncation that keeps memory flat however long an article is.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import dist
from ..data import MetaStreams, load_corpus
from ..train.checkpoint import capture_rng, load_checkpoint, load_weights, save_checkpoint
from ..train.lm_checkpoint import check_data_matches, load_lm
from ..train.logger import RunLogger
from ..train.progress import Progress, budget_exhausted
from ..train.setup import (
    config_dict, restore_rank_rng, resume_path, save_resolved_config, seed_everything, seed_rank, select_device,
)
from .adapt import adapt_segment
from ..model import detach_state, token_nll
from .fast_weights import finite_streams, select_dynamic, static_weights, zero_rows
from .grad_stats import GradStats, measure_grad_stats
from .meta_eval import quick_adaptive_valid
from .reading_state import ReadingState, fresh_state
from .rules import build_rule

WindowHook = Callable[[ReadingState, int], ReadingState]


def _ewc_penalty(model, anchor: Dict[str, torch.Tensor], fisher: Dict[str, torch.Tensor], lam: float):
    total = None
    for n, p in model.named_parameters():
        if n in fisher:
            term = (fisher[n] * (p - anchor[n]).pow(2)).sum()
            total = term if total is None else total + term
    return lam * total


def train_meta(cfg: DictConfig, run_dir: str | Path, on_window: Optional[WindowHook] = None) -> Dict[str, float]:
    """`on_window(state, step)` may replace the reading state before each window (fault injection in tests)."""
    run_dir = Path(run_dir)
    mc = cfg.meta
    if mc.name != "gated":
        raise ValueError(f"stage=meta trains a learned rule: use meta=gated (meta={mc.name} has nothing to train)")
    device = select_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)

    ckpt_path = resume_path(cfg.trainer.resume, run_dir)
    resumed = load_checkpoint(ckpt_path, map_location="cpu") if ckpt_path is not None else None
    lm_path = ckpt_path if resumed is not None else mc.lm_checkpoint
    if lm_path is None:
        raise ValueError("stage=meta needs meta.lm_checkpoint=<path to a stage-1 checkpoint (best.pt)>")
    model, lm_ckpt = load_lm(lm_path, device)
    # The model is the checkpoint's: record its config so this run's checkpoints describe it.
    cfg = OmegaConf.merge(cfg, {"model": lm_ckpt["config"]["model"]})
    corpus = load_corpus(cfg.data, splits=tuple(dict.fromkeys([mc.split, "valid"])))
    check_data_matches(lm_ckpt, corpus, lm_path)

    names = select_dynamic(model, mc.dynamic)
    streams = MetaStreams(corpus.splits[mc.split], mc.batch_size, mc.seg_len, dist.rank(), dist.world_size())
    if resumed is not None and resumed.get("grad_stats") is not None:
        stats = GradStats.from_state_dict(resumed["grad_stats"], device)
    elif lm_ckpt.get("grad_stats") is not None:
        stats = GradStats.from_state_dict(lm_ckpt["grad_stats"], device)
    else:
        dist.print0(f"measuring gradient statistics on {mc.gradstat_tokens} {mc.split} tokens ...")
        stats = _measure_global_grad_stats(model, names, streams, mc.gradstat_tokens)
    stats.check_covers(names)

    learner = build_rule(cfg.meta, names, stats).to(device)
    seed_rank(cfg.trainer.seed)  # φ is the same on every rank (same seed); dropout masks differ per rank
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}  # θ0*, the stage-1 weights
    for p in model.parameters():
        p.requires_grad_(bool(mc.train_static))
    groups = [{"params": list(learner.parameters()), "lr": mc.meta_lr}]
    if mc.train_static:
        groups.append({"params": list(model.parameters()), "lr": mc.static_lr})
    optimizer = torch.optim.Adam(groups)

    progress = Progress()
    theta0 = static_weights(model, names)
    # learner state `[1, *shape]` (broadcast over streams, like eval/adaptive.py): a bare `[*shape]` breaks resets
    state = fresh_state(model, theta0, streams.num_local_streams,
                        learner.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
    if resumed is not None:
        load_weights(model, resumed["model"], source=f"checkpoint {ckpt_path}")
        learner.load_state_dict(resumed["meta_learner"])
        optimizer.load_state_dict(resumed["meta_optimizer"])
        anchor = {n: t.to(device) for n, t in resumed["anchor"].items()}
        progress = Progress(**resumed["progress"])
        restore_rank_rng(resumed, cfg.trainer.seed, progress.step)
        # Saved in global stream order (gathered from every rank): any number of ranks takes its own rows.
        saved = ReadingState.from_dict(resumed["reading_state"], "cpu")
        if saved.batch_size == streams.num_streams:
            state = ReadingState.from_dict(_map_tensors(resumed["reading_state"], dist.shard_streams), device)
        else:
            dist.print0(f"the checkpoint's reading state has {saved.batch_size} streams, not meta.batch_size="
                        f"{streams.num_streams}: streams restart from θ0")
        dist.print0(f"resumed from {ckpt_path} at step {progress.step}")

    save_resolved_config(cfg, run_dir)
    logger = RunLogger(run_dir, cfg.logger, config_dict(cfg))
    tc = cfg.trainer
    bar = tqdm(total=tc.max_steps, initial=progress.step, disable=not (tc.progress_bar and dist.is_main()),
               desc="meta", dynamic_ncols=True)

    def checkpoint(name: str) -> None:
        # Collectives first, on every rank: per-stream states in global stream order, every rank's RNG.
        reading_state = _map_tensors(_state_dict(state), dist.gather_streams)
        static_all = [(dist.gather_streams(h), dist.gather_streams(c)) for h, c in static_lm]
        rng_ranks = dist.gather_objects(capture_rng())
        if not dist.is_main():
            return
        payload = {
            "stage": "meta",
            "config": config_dict(cfg),
            "tokenizer": corpus.tokenizer.state_dict(),
            "data_checksums": dict(corpus.checksums),
            "model": {n: p.detach().cpu() for n, p in model.named_parameters()},
            "anchor": {n: t.cpu() for n, t in anchor.items()},
            "dynamic_names": names,
            "grad_stats": stats.state_dict(),
            "meta_learner": {k: v.cpu() for k, v in learner.state_dict().items()},
            "meta_optimizer": optimizer.state_dict(),
            "progress": progress.__dict__,
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "reading_state": reading_state,
            "static_lm": static_all,
        }
        save_checkpoint(payload, run_dir / "checkpoints" / name)

    def validate() -> float:
        metrics = quick_adaptive_valid(model, learner, stats, names, corpus, cfg, logger=logger, step=progress.step)
        logger.log(metrics, progress.step)
        # Every rank evaluates the same articles with the same weights; rank 0's loss decides for all.
        loss = dist.broadcast_float(metrics["valid/meta/loss"])
        if loss < progress.best_valid_loss:
            progress.best_valid_loss = loss
            checkpoint("best.pt")
        checkpoint("last.pt")
        return loss

    static_lm = model.init_state(streams.num_local_streams)
    if resumed is not None and resumed.get("static_lm") is not None \
            and resumed["static_lm"][0][0].shape[0] == streams.num_streams:
        static_lm = [(dist.shard_streams(h).to(device), dist.shard_streams(c).to(device))
                     for h, c in resumed["static_lm"]]
    steps_this_session = 0
    started = time.time() - progress.elapsed
    window_start = time.time()
    last_valid = None
    model.train()
    try:
        while not budget_exhausted(tc, progress):
            dist.inject_failure(tc.fail_at_step, progress.step)
            if on_window is not None:
                state = on_window(state, progress.step)
            theta0 = static_weights(model, names)
            losses: List[torch.Tensor] = []
            static_losses: List[torch.Tensor] = []
            diag: Dict[str, torch.Tensor] = {}
            for _ in range(mc.window):
                batch = streams.batch(progress.position)
                progress.position += 1
                x, y = batch.x.to(device), batch.y.to(device)
                state = state.reset(batch.new_article.to(device), theta0)
                with torch.no_grad():  # the static model on the same tokens, for the improvement metric
                    static_loss, static_lm = _static_loss(model, x, y, static_lm, batch.new_article.to(device))
                    static_losses.append(static_loss)
                seg_loss, _, state, diag = adapt_segment(
                    model, learner, state, theta0, x, y, keep_graph=True,
                    second_order=mc.second_order, use_checkpoint=mc.checkpoint_segments,
                )
                losses.append(seg_loss)
            per_stream = torch.stack(losses).mean(0)  # [b]
            meta_loss = per_stream.mean()
            total = meta_loss
            if mc.train_static and mc.ewc > 0:
                total = total + _ewc_penalty(model, anchor, stats.v, mc.ewc)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            params = [p for g in optimizer.param_groups for p in g["params"]]
            _sync_grads(params)
            grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)  # same on all ranks
            streams_ok = finite_streams(state.fast) & torch.isfinite(per_stream.detach())
            # One all-reduce for the decision (every rank skips or steps together) and the logged means.
            finite_meta = per_stream.detach()[streams_ok]
            n_bad, meta_sum, meta_count, static_sum = dist.sum_floats(
                int((~streams_ok).sum()), float(finite_meta.sum()), finite_meta.numel(),
                float(torch.stack(static_losses).mean()),
            )
            skipped = 0
            if grads_ok and n_bad == 0:
                torch.nn.utils.clip_grad_norm_(params, mc.meta_clip)
                optimizer.step()
            else:
                skipped = int(n_bad) or 1
                dist.print0(f"step {progress.step}: non-finite meta-gradient or weights; update skipped, "
                            f"{int(n_bad)} stream(s) reset to θ0")
            state = state.detach().reset(~streams_ok, static_weights(model, names)) if skipped else state.detach()

            progress.step += 1
            steps_this_session += 1
            n_tok = mc.window * x.numel() * dist.world_size()
            progress.tokens += n_tok
            progress.epoch = progress.position // max(streams.segments_per_epoch, 1)
            progress.elapsed = dist.broadcast_float(time.time() - started)  # rank 0's clock: stop together
            static_mean = torch.tensor(static_sum / dist.world_size())
            meta_value = meta_sum / meta_count if meta_count else math.nan
            if progress.step % tc.log_interval == 0 or skipped or budget_exhausted(tc, progress):
                dt = max(time.time() - window_start, 1e-9)
                metrics = {
                    "meta/loss": meta_value, "meta/static_loss": float(static_mean),
                    "meta/improvement": float(static_mean) - meta_value, "meta/skipped_updates": skipped,
                    "meta/tokens_per_s": n_tok / dt, "meta/tokens": progress.tokens,
                }
                metrics.update({f"meta/{k}": float(v) for k, v in diag.items()})
                logger.log(metrics, progress.step)
                bar.set_postfix(loss=f"{meta_value:.3f}", gain=f"{float(static_mean) - meta_value:+.3f}")
            window_start = time.time()
            bar.update(1)
            if progress.step % tc.eval_interval == 0 and not budget_exhausted(tc, progress):
                last_valid = validate()
            if tc.stop_after_steps is not None and steps_this_session >= tc.stop_after_steps \
                    and not budget_exhausted(tc, progress):
                checkpoint("last.pt")
                return {"step": progress.step, "stopped": 1.0}
        last_valid = validate()
        return {"step": progress.step, "valid/meta/loss": last_valid, "valid/meta/ppl": math.exp(last_valid)}
    finally:
        bar.close()
        logger.finish()


def _static_loss(model, x, y, lm_state, new_article):
    """The static model's mean loss on a segment, reading with its own (h, c)."""
    lm_state = [(zero_rows(h, new_article), zero_rows(c, new_article)) for h, c in lm_state]
    out = model(x, lm_state)
    return token_nll(out.logits, y).mean(), detach_state(out.state)


def _measure_global_grad_stats(model, names, streams: MetaStreams, max_tokens: int) -> GradStats:
    """The mean squared gradients over all B global streams: every rank measures the same number of segment
    batches on its own streams, then the (equally weighted) means are averaged over ranks."""
    batch_tokens = streams.seg_len * streams.num_streams
    n_batches = -(-max_tokens // batch_tokens)
    stats = measure_grad_stats(model, names, streams, n_batches * streams.seg_len * streams.num_local_streams)
    if dist.is_distributed():
        for t in stats.v.values():
            dist.all_reduce_sum(t).div_(dist.world_size())
        stats = GradStats(stats.v, stats.tokens * dist.world_size())
    return stats


def _state_dict(state: ReadingState) -> dict:
    """The reading state's tensors on their device (contiguous), in the layout of `ReadingState.to_cpu`."""
    return {
        "lm": [(h.detach(), c.detach()) for h, c in state.lm],
        "fast": {n: t.detach().contiguous() for n, t in state.fast.items()},
        # a learner state still at its shared initial value `[1, *shape]` is expanded to one row per stream
        "learner": {n: (t if n not in state.fast or t.shape == state.fast[n].shape else
                        t.expand_as(state.fast[n])).detach().contiguous() for n, t in state.learner.items()},
    }


def _map_tensors(d: dict, fn) -> dict:
    """Apply `fn` to every per-stream tensor of a reading-state dict."""
    return {
        "lm": [(fn(h), fn(c)) for h, c in d["lm"]],
        "fast": {n: fn(t) for n, t in d["fast"].items()},
        "learner": {n: fn(t) for n, t in d["learner"].items()},
    }


def _sync_grads(params) -> None:
    """Average meta-gradients over ranks (each rank reads different streams)."""
    if not dist.is_distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce_sum(p.grad)
            p.grad.div_(dist.world_size())
