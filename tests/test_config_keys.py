"""Every config key has an effect: for every option of every group (found as Hydra finds them, so new groups are
covered without naming them here), the config is composed, the stage that consumes it runs for a step or two on a
tiny model, and every key must have been read by the code, by its full dotted path, while it ran.

Reads are recorded on `DictConfig` itself (attribute, item and `get` access, with the node's full key), counted
only when made from dynlm's own modules other than the checks and the command line (dynlm/config.py, run/cli.py):
copying the config into a checkpoint or printing it reads nothing. What this catches: a key the run never looks at
(a schema field left behind, a key another stage or choice reads, a YAML key nothing uses), and a key read where
`CONDITIONS` says it is not (the table gone stale). What not: a key read but then ignored (a read is not an effect),
a key read only to be checked (dynlm/train's own checks count as reads), and reads of a copy made with
`OmegaConf.to_container` (its keys lose their path; model settings stored in a checkpoint, for one).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from omegaconf import DictConfig, OmegaConf

import dynlm
from dynlm.config import ONLY_WITH, DynlmError
from hydra_helpers import compose_config, group_options

PKG = Path(dynlm.__file__).resolve().parent
NOT_COUNTED = {PKG / "config.py", PKG / "run" / "cli.py"}  # checks and --help read every key

# key or section -> the choices (key, value) under one of which it is read. Stage 2 rebuilds the model from its
# checkpoint and trains φ with meta.learner_lr, reading meta.batch_size streams in meta.seg_len segments, clipping
# with meta.clip and validating on meta.valid_max_tokens; the rule (rule=NAME) is stage 2's. dynlm.config.ONLY_WITH:
# the stage-2 keys only one rule or estimator reads (a run refuses them set elsewhere).
CONDITIONS: Dict[str, Tuple[Tuple[str, object], ...]] = {
    "model": (("stage", "lm"),), "optim": (("stage", "lm"),), "meta": (("stage", "meta"),),
    "rule": (("stage", "meta"),),
    "data.batch_size": (("stage", "lm"),), "data.bptt": (("stage", "lm"),), "trainer.clip": (("stage", "lm"),),
    "trainer.valid_max_tokens": (("stage", "lm"),),
    "optim.betas": (("optim.name", "adam"),), "optim.nonmono": (("optim.name", "ntasgd"),),
    **{f"logger.{k}": (("logger.name", "wandb"),) for k in ("project", "entity", "run_name", "mode", "tags")},
    "data.vocab_size": (("data.tokenizer", "sentencepiece"),),
    # the tokenizer cache (sentencepiece) and the gradient statistics' cache (stage 2)
    "data.cache_dir": (("data.tokenizer", "sentencepiece"), ("stage", "meta")),
    "data.hub_config": (("data.dir", None),),  # a download: not run here
    **{key: ((f"meta.{choice}", value),) for key, (choice, value) in ONLY_WITH.items()},
}
LABELS = {"data.name", "model.name"}  # name the run in its config.yaml and on wandb; nothing reads them
# runs beside the group options, so that every condition above is met by one (but data.dir=null: a download)
VARIANTS = [["data.tokenizer=sentencepiece", "data.vocab_size=500"], ["stage=meta", "meta.estimator=es"],
            ["stage=meta", "meta.train_static=true", "meta.ewc=1.0"],
            ["stage=meta", "meta.train_static=true", "meta.gradstat_refresh=1"],
            ["stage=meta", "rule=gated", "rule.momentum=true"]]
REFUSED = DynlmError  # a choice the run refuses (stage=meta meta=dyneval: nothing to train) is not ignored either


@contextmanager
def key_reads() -> Iterator[Set[str]]:
    """The full dotted keys dynlm's code reads from any `DictConfig` while the block runs."""
    read: Set[str] = set()
    originals = {name: getattr(DictConfig, name) for name in ("__getattr__", "__getitem__", "get")}

    def recording(original):
        def access(self, key, *args, **kwargs):
            value = original(self, key, *args, **kwargs)
            caller = Path(sys._getframe(1).f_code.co_filename)
            if isinstance(key, str) and caller.is_relative_to(PKG) and caller not in NOT_COUNTED:
                read.add(self._get_full_key(key))
            return value
        return access

    for name, original in originals.items():
        setattr(DictConfig, name, recording(original))
    try:
        yield read
    finally:
        for name, original in originals.items():
            setattr(DictConfig, name, original)


def leaf_keys(tree: dict, prefix: str = "") -> List[str]:
    out = []
    for k, v in tree.items():
        out += leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def holds(cfg, choice: Tuple[str, object]) -> bool:
    key, value = choice
    return OmegaConf.select(cfg, key) == value


def expected_unread(cfg) -> Set[str]:
    keys = leaf_keys(OmegaConf.to_container(cfg))
    return {k for k in keys if k in LABELS or any(
        name in CONDITIONS and not any(holds(cfg, c) for c in CONDITIONS[name]) for name in (k.split(".")[0], k))}


def stages_reading(group: str) -> List[str]:
    stages = [v for k, v in CONDITIONS.get(group, ()) if k == "stage"]
    return stages or ["lm", "meta"]


def runs() -> List[List[str]]:
    """Overrides of each run: every option of every group under each stage that reads its section, the
    variants; one run per distinct config."""
    out, seen = [], []
    for overrides in [[f"{g}={o}", f"stage={s}"] for g, o in group_options() if g != "experiment"
                      for s in stages_reading(g)] + VARIANTS:
        cfg = OmegaConf.to_container(compose_config(overrides))
        if cfg not in seen:
            seen.append(cfg)
            out.append(overrides)
    return out


TINY = {"model.emb_size": 16, "model.hidden_size": 32, "model.num_layers": 2, "data.batch_size": 4, "data.bptt": 20,
        "data.eval_bptt": 64, "trainer.max_steps": 2, "trainer.max_epochs": "null", "trainer.eval_interval": 2,
        "trainer.log_interval": 1, "trainer.progress_bar": "false", "trainer.device": "cpu",
        "trainer.valid_max_tokens": 200, "meta.window": 2, "meta.batch_size": 2, "meta.gradstat_tokens": 200,
        "meta.valid_articles": 1, "meta.valid_max_tokens": 100, "logger.mode": "disabled"}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", runs(), ids=" ".join)
def test_every_key_is_read_by_the_run_it_configures(overrides, lm_checkpoint, tmp_path):
    data, ckpt = lm_checkpoint
    sizes = [f"{k}={v}" for k, v in TINY.items() if not any(o.startswith(k + "=") for o in overrides)]
    cfg = compose_config(overrides + sizes + [f"data.dir={data}", f"meta.lm_checkpoint={ckpt}"])
    from dynlm.train import train

    with key_reads() as read:
        try:
            train(cfg, tmp_path / "run")
        except REFUSED:
            return
    keys = set(leaf_keys(OmegaConf.to_container(cfg)))
    assert keys - read == expected_unread(cfg)


def test_every_condition_is_met_by_a_run():
    """So each conditional key is checked to be read somewhere (but data.hub_config: a download)."""
    configs = [compose_config(o + ["data.dir=data"]) for o in runs()]
    unmet = {(k, c) for k, cs in CONDITIONS.items() for c in cs if not any(holds(cfg, c) for cfg in configs)}
    assert unmet == {("data.hub_config", ("data.dir", None))}


def test_an_unread_key_is_reported():
    cfg = compose_config(["model=tiny"])
    with key_reads() as read:
        _ = cfg.model.emb_size  # read from this test module: not dynlm's code, so not counted
    assert read == set()
    from dynlm.model import build_model

    with key_reads() as read:
        build_model(cfg.model, 10)
    assert "model.emb_size" in read and "model.alpha" not in read and "optim.lr" not in read
