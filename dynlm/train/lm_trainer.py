"""Stage 1: train the static (long-term) AWD-LSTM language model.

B contiguous streams, variable BPTT length with the learning rate scaled by it (AWD-LSTM), gradient
clipping, NT-ASGD or Adam, periodic validation on the full valid split read as one stream, atomic
`last.pt` / `best.pt`, and exact resume (weights, optimiser, averager, data position, hidden state, RNGs).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import dist
from ..data import Corpus, batchify, get_batch, load_corpus, sample_seq_len
from ..eval.static import static_token_nll
from ..model import AWDLSTM, activation_regularization, build_model, detach_state, token_nll
from .checkpoint import capture_rng, load_checkpoint, load_weights, save_checkpoint
from .logger import RunLogger
from .ntasgd import WeightAverager
from .progress import Progress, budget_exhausted
from .setup import (
    config_dict, restore_rank_rng, resume_path, save_resolved_config, seed_everything, seed_rank, select_device,
)


class NonFiniteLossError(FloatingPointError):
    pass


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.name == "ntasgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}: use optim=ntasgd or optim=adam")


def evaluate_loss(model: AWDLSTM, corpus: Corpus, split: str, chunk: int, weights=None) -> float:
    """Mean NLL per token of a whole split (batch 1, one stream): the number evaluate.py reports as static."""
    nll = static_token_nll(model, corpus.splits[split].ids, corpus.tokenizer.eos_id, chunk, weights)
    return float(nll.double().sum() / nll.numel())


def train_lm(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    run_dir = Path(run_dir)
    device = select_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)
    corpus = load_corpus(cfg.data)
    model = build_model(cfg.model, corpus.tokenizer.vocab_size).to(device)
    optimizer = build_optimizer(cfg.optim, model)
    averager = WeightAverager(cfg.optim.nonmono) if cfg.optim.name == "ntasgd" else None
    seed_rank(cfg.trainer.seed)  # same initial weights everywhere (DDP broadcasts them too), own dropout masks
    if cfg.data.batch_size % dist.world_size():
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by the {dist.world_size()} processes: each "
            "rank reads batch_size / world_size of the streams. Choose a multiple of the number of processes."
        )
    # Each rank reads its own slice of the B global streams (strided: global stream j is on rank j % world),
    # the same time index and BPTT length everywhere.
    streams = batchify(corpus.splits["train"].ids, cfg.data.batch_size)
    streams = streams[:, dist.rank() :: dist.world_size()].contiguous().to(device)
    local_b = streams.shape[1]
    bptt_gen = torch.Generator().manual_seed(cfg.trainer.seed)
    progress = Progress()
    hidden = model.init_state(local_b)

    ckpt_path = resume_path(cfg.trainer.resume, run_dir)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        load_weights(model, ckpt["train_weights"], source=f"checkpoint {ckpt_path}")
        optimizer.load_state_dict(ckpt["optimizer"])
        if averager is not None and ckpt.get("averager") is not None:
            averager.load_state_dict(ckpt["averager"])
        progress = Progress(**ckpt["progress"])
        bptt_gen.set_state(ckpt["bptt_rng"])
        restore_rank_rng(ckpt, cfg.trainer.seed, progress.step)
        # Saved in global stream order (gathered from every rank), so any number of ranks picks up its rows.
        if ckpt["hidden"][0][0].shape[0] == cfg.data.batch_size:
            hidden = [(dist.shard_streams(h).to(device), dist.shard_streams(c).to(device)) for h, c in ckpt["hidden"]]
        else:
            dist.print0(f"the checkpoint's hidden state has {ckpt['hidden'][0][0].shape[0]} streams, not "
                        f"data.batch_size={cfg.data.batch_size}: streams restart from a zero state")
        dist.print0(f"resumed from {ckpt_path} at step {progress.step}")

    save_resolved_config(cfg, run_dir)
    logger = RunLogger(run_dir, cfg.logger, config_dict(cfg))
    if dist.is_distributed():  # gradients averaged over ranks in backward
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    tc = cfg.trainer
    bar = tqdm(
        total=tc.max_steps, initial=progress.step, disable=not (tc.progress_bar and dist.is_main()),
        desc="train", dynamic_ncols=True,
    )

    def eval_weights():
        return averager.average if averager is not None and averager.active else None

    def checkpoint(name: str) -> None:
        # Collectives first, on every rank: per-stream hidden states in global order, every rank's RNG.
        hidden_all = [(dist.gather_streams(h), dist.gather_streams(c)) for h, c in hidden]
        rng_ranks = dist.gather_objects(capture_rng())
        if not dist.is_main():
            return
        weights = eval_weights() or {n: p.detach() for n, p in model.named_parameters()}
        payload = {
            "stage": "lm",
            "config": config_dict(cfg),
            "tokenizer": corpus.tokenizer.state_dict(),
            "data_checksums": dict(corpus.checksums),
            "model": {n: t.detach().cpu() for n, t in weights.items()},
            "train_weights": {n: p.detach().cpu() for n, p in model.named_parameters()},
            "optimizer": optimizer.state_dict(),
            "averager": averager.state_dict() if averager is not None else None,
            "progress": progress.__dict__,
            "bptt_rng": bptt_gen.get_state(),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "hidden": hidden_all,
        }
        save_checkpoint(payload, run_dir / "checkpoints" / name)

    def validate() -> float:
        # Every rank reads the whole valid stream (one stream: its loss does not depend on the number of
        # ranks); rank 0's number is broadcast so that every rank takes the same decisions below.
        loss = dist.broadcast_float(evaluate_loss(model, corpus, "valid", cfg.data.eval_bptt, eval_weights()))
        if averager is not None and averager.should_trigger(loss):
            averager.start(model)
            dist.print0(f"NT-ASGD: averaging from step {progress.step}")
        metrics = {"valid/loss": loss, "valid/ppl": math.exp(loss), "valid/averaging": float(eval_weights() is not None)}
        logger.log(metrics, progress.step)
        if loss < progress.best_valid_loss:
            progress.best_valid_loss = loss
            checkpoint("best.pt")
        checkpoint("last.pt")
        return loss

    def done() -> bool:
        return budget_exhausted(tc, progress)

    base_lr = cfg.optim.lr
    started = time.time() - progress.elapsed
    window_loss, window_tokens, window_start = 0.0, 0, time.time()
    steps_this_session = 0
    last_valid: Optional[float] = None
    model.train()
    try:
        while not done():
            dist.inject_failure(tc.fail_at_step, progress.step)
            seq_len = sample_seq_len(cfg.data.bptt, bptt_gen)
            x, y = get_batch(streams, progress.position, seq_len)
            for group in optimizer.param_groups:  # shorter sequences take proportionally smaller steps
                group["lr"] = base_lr * x.shape[0] / cfg.data.bptt
            hidden = detach_state(hidden)
            out = train_model(x, hidden)
            hidden = out.state
            nll = token_nll(out.logits, y).mean()
            # The mean over ranks (equal shards): the logged loss, and every rank stops together on a NaN.
            nll_value = dist.sum_floats(nll.item())[0] / dist.world_size()
            if not math.isfinite(nll_value):
                raise NonFiniteLossError(
                    f"training loss became {nll_value} at step {progress.step}. The last good checkpoint is "
                    f"{run_dir / 'checkpoints' / 'last.pt'}; lower optim.lr or trainer.clip and resume from it."
                )
            loss = nll + activation_regularization(out.last_dropped, out.last_raw, cfg.model.alpha, cfg.model.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            optimizer.step()
            if averager is not None:
                averager.update(model)

            n_tok = x.numel() * dist.world_size()
            progress.step += 1
            progress.tokens += n_tok
            progress.position += x.shape[0]
            if progress.position >= streams.shape[0] - 1:
                progress.position = 0
                progress.epoch += 1
                hidden = model.init_state(local_b)
            steps_this_session += 1
            progress.elapsed = dist.broadcast_float(time.time() - started)  # rank 0's clock: stop together
            window_loss += nll_value * n_tok
            window_tokens += n_tok

            if progress.step % tc.log_interval == 0 or done():
                dt = max(time.time() - window_start, 1e-9)
                mean = window_loss / window_tokens
                metrics = {
                    "train/loss": mean, "train/ppl": math.exp(mean), "train/lr": base_lr,
                    "train/tokens_per_s": window_tokens / dt, "train/epoch": progress.epoch,
                    "train/tokens": progress.tokens,
                }
                logger.log(metrics, progress.step)
                bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(mean):.1f}", tok_s=f"{window_tokens / dt:.0f}")
                window_loss, window_tokens, window_start = 0.0, 0, time.time()
            bar.update(1)

            if progress.step % tc.eval_interval == 0 and not done():
                last_valid = validate()
            if tc.stop_after_steps is not None and steps_this_session >= tc.stop_after_steps and not done():
                checkpoint("last.pt")
                dist.print0(f"stopping after {steps_this_session} steps as asked (trainer.stop_after_steps)")
                return {"step": progress.step, "stopped": 1.0}
        last_valid = validate()
        result = {"step": progress.step, "valid/loss": last_valid, "valid/ppl": math.exp(last_valid),
                  "best_valid/ppl": math.exp(progress.best_valid_loss), "elapsed": progress.elapsed,
                  "tokens": progress.tokens}
        dist.print0(
            f"done: step {progress.step}, epoch {progress.epoch}, valid ppl {math.exp(last_valid):.2f}, "
            f"best {math.exp(progress.best_valid_loss):.2f}, {progress.elapsed:.0f}s"
        )
        return result
    finally:
        bar.close()
        logger.finish()
