"""Stage 1: train the static (long-term) AWD-LSTM language model.

B contiguous streams, variable BPTT length with the learning rate scaled by it (AWD-LSTM), gradient
clipping, NT-ASGD or Adam, periodic validation on the full valid split read as one stream, atomic
`last.pt` / `best.pt`, and exact resume (weights, optimiser, averager, data position, hidden state, RNGs).
The unit of work is `lm_step`; the loop around it is the run scaffold's (`run/scaffold.py`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import dist
from ..config import ConfigValueError
from ..data import Corpus, batchify, expected_seq_len, get_batch, load_corpus, sample_seq_len
from ..dynamic.reading import read_stream
from ..model import AWDLSTM, LMState, activation_regularization, build_model, detach_state, token_nll
from ..run.checkpoint import load_weights
from ..run.from_checkpoint import check_resumed_data, holdout_articles
from ..run.logger import RunLogger
from ..run.progress import Progress, token_bar
from ..run.scaffold import DivergedError, run
from .ntasgd import WeightAverager
from .plateau import PlateauDecay


class NonFiniteLossError(DivergedError):
    """Training diverged: the message says what to change (and the run scaffold, which checkpoint to resume)."""


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.name == "ntasgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigValueError(f"unknown optimizer {cfg.name!r}: use optim=ntasgd or optim=adam")


def evaluate_loss(model: AWDLSTM, corpus: Corpus, split: str, chunk: int, weights=None,
                  max_tokens: Optional[int] = None, on_segment=None) -> float:
    """Mean NLL per token of a split read as one stream from its start (batch 1), or of its first `max_tokens`
    tokens: with the whole split, the number evaluate.py reports as static."""
    nll = read_stream(model, corpus.splits[split].ids[:max_tokens], corpus.tokenizer.eos_id, chunk,
                      weights=weights, on_segment=on_segment)
    return float(nll.double().sum() / nll.numel())


def lm_step(cfg: DictConfig, model: AWDLSTM, train_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            x: torch.Tensor, y: torch.Tensor, hidden: LMState, averager: Optional[WeightAverager] = None,
            lr_scale: float = 1.0):
    """One stage-1 step on `x, y [T, b]`: forward from `hidden`, NLL + AR/TAR, backward, clip, optimiser step,
    weight averaging. The learning rate is `optim.lr * lr_scale` scaled by T / bptt. Returns (mean NLL over all
    ranks, new hidden).

    `train_model` is `model` or its DDP wrapper. A non-finite loss raises before any weight changes.
    """
    for group in optimizer.param_groups:  # shorter sequences take proportionally smaller steps
        group["lr"] = cfg.optim.lr * lr_scale * x.shape[0] / cfg.data.bptt
    out = train_model(x, detach_state(hidden))
    nll = token_nll(out.logits, y).mean()
    # The mean over ranks (equal shards): the logged loss, and every rank stops together on a NaN.
    nll_value = dist.sum_floats(nll.item())[0] / dist.world_size()
    if not math.isfinite(nll_value):
        raise NonFiniteLossError(f"training loss became {nll_value}")
    loss = nll + activation_regularization(out.last_dropped, out.last_raw, cfg.model.alpha, cfg.model.beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.trainer.clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.clip)
    optimizer.step()
    if averager is not None:
        averager.update(model)
    return nll_value, out.state


class LMTask:
    """Stage 1 as a task of the run scaffold."""

    stage = "lm"
    diverged_fix = "lower optim.lr or trainer.clip"

    def __init__(self, cfg: DictConfig, device: torch.device, resumed: Optional[Dict[str, Any]], path: Optional[Path]):
        self.cfg, self.device = cfg, device
        if cfg.data.batch_size % dist.world_size():
            raise ConfigValueError(
                f"data.batch_size={cfg.data.batch_size} is not divisible by the {dist.world_size()} processes: each "
                "rank reads batch_size / world_size of the streams. Choose a multiple of the number of processes."
            )
        if resumed is not None:  # a resumed run keeps its articles out (data.meta_holdout_articles) as it began
            held = holdout_articles(cfg.data.meta_holdout_articles, resumed, path)
            self.cfg = cfg = OmegaConf.merge(cfg, {"data": {"meta_holdout_articles": held}})
        # test is for evaluation only; train is without its held-out articles (data.meta_holdout_articles)
        self.corpus = load_corpus(cfg.data, splits=("train", "valid"))
        if resumed is not None:  # the run goes on reading its data where it stopped: the same text, the same ids
            check_resumed_data(resumed, self.corpus, path)
        self.model = build_model(cfg.model, self.corpus.tokenizer.vocab_size).to(device)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.averager = WeightAverager(cfg.optim.nonmono) if cfg.optim.name == "ntasgd" else None
        # Each rank reads its own slice of the B global streams (strided: global stream j is on rank j % world),
        # the same time index and BPTT length everywhere.
        streams = batchify(self.corpus.splits["train"].ids, cfg.data.batch_size)
        self.streams = streams[:, dist.rank() :: dist.world_size()].contiguous().to(device)
        self.bptt_gen = torch.Generator().manual_seed(cfg.trainer.seed)
        self.hidden = self.model.init_state(self.streams.shape[1])
        self.plateau = PlateauDecay(cfg.optim.decay, cfg.optim.decay_patience)
        if resumed is not None:
            self._restore(resumed, path)
        self.train_model = self.model
        if dist.is_distributed():  # gradients averaged over ranks in backward
            self.train_model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # the training loss since the last log record, carried over a resume: the next record is the same
        self._loss_sum, self._tokens = (0.0, 0) if resumed is None else tuple(resumed.get("log_window", (0.0, 0)))
        self._timed_tokens = 0  # tokens/s counts this process's tokens only

    def _restore(self, ckpt: Dict[str, Any], path: Path) -> None:
        load_weights(self.model, ckpt["train_weights"], source=f"checkpoint {path}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.averager is not None and ckpt.get("averager") is not None:
            self.averager.load_state_dict(ckpt["averager"], self.device)
        self.bptt_gen.set_state(ckpt["bptt_rng"])
        if ckpt.get("lr_schedule") is not None:  # checkpoints before optim.decay have none: a constant rate
            self.plateau.load_state_dict(ckpt["lr_schedule"])
        # Saved in global stream order (gathered from every rank), so any number of ranks picks up its rows.
        b = self.cfg.data.batch_size
        if ckpt["hidden"][0][0].shape[0] == b:
            self.hidden = [(dist.shard_streams(h).to(self.device), dist.shard_streams(c).to(self.device))
                           for h, c in ckpt["hidden"]]
        else:
            dist.print0(f"the checkpoint's hidden state has {ckpt['hidden'][0][0].shape[0]} streams, not "
                        f"data.batch_size={b}: streams restart from a zero state")

    def eval_weights(self):
        return self.averager.average if self.averager is not None and self.averager.active else None

    def step(self, progress: Progress) -> bool:
        seq_len = sample_seq_len(self.cfg.data.bptt, self.bptt_gen)
        x, y = get_batch(self.streams, progress.position, seq_len)
        self.model.train()
        try:
            nll, self.hidden = lm_step(self.cfg, self.model, self.train_model, self.optimizer, x, y, self.hidden,
                                       self.averager, self.plateau.scale)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(
                f"{e} at step {progress.step}: {self.diverged_fix}"
            ) from None
        n_tok = x.numel() * dist.world_size()
        progress.tokens += n_tok
        progress.position += x.shape[0]
        if progress.position >= self.streams.shape[0] - 1:
            progress.position = 0
            progress.epoch += 1
            self.hidden = self.model.init_state(self.streams.shape[1])
        self._loss_sum += nll * n_tok
        self._tokens += n_tok
        self._timed_tokens += n_tok
        return False

    def metrics(self, p: Progress, seconds: float) -> Dict[str, float]:
        mean = self._loss_sum / self._tokens
        out = {"train/loss": mean, "train/ppl": math.exp(mean), "train/lr": self.cfg.optim.lr * self.plateau.scale,
               "train/tokens_per_s": self._timed_tokens / seconds, "train/epoch": p.epoch, "train/tokens": p.tokens}
        self._loss_sum, self._tokens, self._timed_tokens = 0.0, 0, 0
        return out

    def postfix(self, m: Dict[str, float]) -> Dict[str, str]:
        return {"loss": f"{m['train/loss']:.3f}", "ppl": f"{m['train/ppl']:.1f}",
                "tok_s": f"{m['train/tokens_per_s']:.0f}"}

    def steps_for_epochs(self, p: Progress, epochs: int) -> float:
        # every epoch reads T - 1 time steps, in steps of expected_seq_len, the last one cut short (about half)
        per_epoch = self.streams.shape[0] - 1
        left = (epochs - p.epoch) * per_epoch - p.position
        return p.step + left / expected_seq_len(self.cfg.data.bptt) + 0.5 * (epochs - p.epoch)

    def validate(self, logger: RunLogger, step: int):
        # Every rank reads the whole valid stream (one stream: its loss does not depend on the number of
        # ranks); rank 0's number is broadcast so that every rank takes the same decisions below.
        max_tokens = self.cfg.trainer.valid_max_tokens
        tokens = self.corpus.splits["valid"].ids[:max_tokens].numel()  # what evaluate_loss reads (None: all)
        with token_bar(tokens, "valid", self.cfg.trainer.progress_bar) as bar:
            loss = dist.broadcast_float(evaluate_loss(self.model, self.corpus, "valid", self.cfg.data.eval_bptt,
                                                      self.eval_weights(), max_tokens, bar.update))
        if self.averager is not None and self.averager.should_trigger(loss):
            self.averager.start(self.model)
            dist.print0(f"NT-ASGD: averaging from step {step}")
        if self.plateau.update(loss):
            dist.print0(f"step {step}: no new best valid loss in {self.plateau.patience} validations: learning "
                        f"rate x{self.plateau.decay} -> {self.cfg.optim.lr * self.plateau.scale:.3g}")
        averaging = float(self.eval_weights() is not None)
        return loss, {"valid/loss": loss, "valid/ppl": math.exp(loss), "valid/averaging": averaging,
                      "valid/tokens": float(tokens)}

    def checkpoint_state(self) -> Dict[str, Any]:
        hidden_all = [(dist.gather_streams(h), dist.gather_streams(c)) for h, c in self.hidden]
        weights = self.eval_weights() or {n: p.detach() for n, p in self.model.named_parameters()}
        return {
            "model": {n: t.detach().cpu() for n, t in weights.items()},
            "train_weights": {n: p.detach().cpu() for n, p in self.model.named_parameters()},
            "optimizer": self.optimizer.state_dict(),
            "averager": self.averager.state_dict() if self.averager is not None else None,
            "bptt_rng": self.bptt_gen.get_state(),
            "hidden": hidden_all,
            "log_window": [self._loss_sum, self._tokens],
            "lr_schedule": self.plateau.state_dict(),
        }

    def result(self, progress: Progress, valid_loss: float) -> Dict[str, float]:
        best = math.exp(progress.best_valid_loss)
        return {"step": progress.step, "valid/loss": valid_loss, "valid/ppl": math.exp(valid_loss),
                "best_valid/ppl": best, "elapsed": progress.elapsed, "tokens": progress.tokens}


def train_lm(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    return run(cfg, run_dir, LMTask)


__all__ = ["LMTask", "NonFiniteLossError", "build_optimizer", "evaluate_loss", "lm_step", "train_lm"]
