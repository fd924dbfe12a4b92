"""Config schema of `scripts/evaluate.py` (conf/evaluate.yaml), registered in Hydra's ConfigStore.

The model, its vocabulary and (by default) the data settings come from the checkpoint; this schema holds
only what evaluation itself chooses. An unknown or mistyped key fails when the config is composed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from ..config import DataConfig, LoggerConfig, register_configs
from ..dynamic.rules import LEARNED, rule_names


def methods() -> List[str]:
    """What evaluation can run, in running order: static, every fixed rule (dyneval), the checkpoint's learned rule."""
    return ["static", *rule_names(learned=False), LEARNED]


@dataclass
class EvalOptions:
    # Evaluate only the first N articles of the split (None: the whole split).
    max_articles: Optional[int] = None
    # Restart the reading state (h, c and the dynamic weights) at every article start. Default: one continuous
    # stream, the standard WikiText protocol.
    reset_per_article: bool = False
    # Streams read side by side: 1 is the standard protocol (one continuous stream, batch 1). B > 1 cuts the split at
    # article boundaries into B contiguous chunks of about equal length, each read with its own state and dynamic
    # weights (batch B): faster, for sweeps and quick looks; each chunk starts from the static weights.
    streams: int = 1
    # Tokens per adaptation segment (None: the checkpoint's meta.seg_len).
    seg_len: Optional[int] = None
    # Tokens per forward pass of static evaluation (None: the checkpoint's data.eval_bptt). No effect on results.
    chunk: Optional[int] = None
    # Krause's dynamic evaluation hyper-parameters (None: Krause's defaults, conf/rule/dyneval.yaml, for a stage-1
    # checkpoint; where the learned rule started, its rule config's eta/lam/eps, for a stage-2 checkpoint).
    dyneval_eta: Optional[float] = None
    dyneval_lam: Optional[float] = None  # λ, as dyneval_eta (η) above
    dyneval_eps: Optional[float] = None  # ε, as dyneval_eta (η) above
    # Update directions beyond Krause's (rule.momentum_beta, ...; 0: off), as dyneval_eta above.
    dyneval_momentum_beta: Optional[float] = None  # β of the step's momentum across segments
    dyneval_delta_decay: Optional[float] = None  # μ of the decay along the inputs just read
    dyneval_whiten: Optional[bool] = None  # input-side whitening of the matrices' steps
    dyneval_whiten_eps: Optional[float] = None  # its ε
    # Gradient statistics for dyneval when the checkpoint has none (a stage-1 checkpoint): Krause's, measured on
    # this many train tokens in batches of this many streams (None: the checkpoint's meta.gradstat_tokens, 200,000
    # by default, and meta.gradstat_streams, 100; at least the split's size: all of it). Krause's scales:
    # docs/dyneval.md.
    gradstat_tokens: Optional[int] = None
    gradstat_streams: Optional[int] = None  # streams of that measurement, as gradstat_tokens above
    # The parameters dyneval adapts on a stage-1 checkpoint, as fnmatch patterns over the model's parameter names
    # (None: all of them, as Krause did; [layers.*]: the LSTM weights and biases only). On a stage-2 checkpoint
    # dyneval adapts the parameters its meta-learner adapts, so that the two compare like for like.
    dynamic: Optional[List[str]] = None
    # Keep those measured statistics in <data.cache_dir, $DYNLM_CACHE or ~/.cache/dynlm>/grad_stats/, keyed by
    # the checkpoint's sha256 and the settings above: the next evaluation of the checkpoint skips the measurement.
    cache_grad_stats: bool = True
    # Reports.
    position_bins: int = 20  # bins of relative position inside an article
    html_articles: List[int] = field(default_factory=list)  # article indices; [] = where learned helps most / least
    html_min_tokens: int = 100  # automatic choice of HTML articles ignores shorter articles (when it can)
    gain_first_article: int = 0  # the instant-gain plot covers this article ...
    gain_articles: int = 4  # ... and the next ones
    smooth: int = 100  # tokens of the moving average in the instant-gain plot
    bar_articles: int = 60  # at most this many articles in the per-article perplexity bars
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress_bar: bool = True  # a tqdm bar on the terminal


@dataclass
class EvalRunConfig:
    checkpoint: Optional[str] = None  # path of a .pt written by scripts/train.py (required)
    split: str = "test"  # valid | test (train works too)
    # A UTF-8 text file to evaluate instead of a split: one article, or one per `= Title =` line; read with the
    # checkpoint's tokenizer, its per-token losses also in token_losses.csv.
    text: Optional[str] = None
    # null: static, dyneval, and learned when the checkpoint has a learned rule (a stage-2 checkpoint).
    methods: Optional[List[str]] = None
    # Data settings default to the checkpoint's own (its data config): keys set here replace them. data.dir
    # defaults to the folder the checkpoint was trained on.
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)


def register_eval_configs() -> None:
    """The training groups (logger=none|wandb reuse them) plus the evaluation schema."""
    register_configs()
    ConfigStore.instance().store(name="base_eval_config", node=EvalRunConfig)


__all__ = ["EvalOptions", "EvalRunConfig", "methods", "register_eval_configs"]
