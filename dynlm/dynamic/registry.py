"""The update-rule registry: what a rule is, and every rule by name.

A rule is an `nn.Module` that one file defines and registers, with its config schema:

    @register_rule("name", config=NameConfig, learned=True)
    class NameRule(nn.Module):
        def __init__(self, names, stats, *, key, ...)   # names: the dynamic parameters; stats: GradStats;
                                                        # one keyword per field of NameConfig but `name`, no defaults
        def forward(self, fast, grads, theta0, seg_loss, learner_state):
            return new_fast, new_learner_state, diagnostics   # rule_base.py spells out the shapes
        def init_learner_state(self, fast): ...         # name -> [1, ...] (shared by the streams until they differ);
                                                        # the reading state keeps one row per stream ([B, ...])
        takes_factored_gradients = False                # True: reading hands it `FactoredGradient`s where it can
        takes_inputs = False                            # True: forward also gets `inputs=` name -> [B, L, C], what
                                                        # each matrix multiplied, where its gradient is not factored
        def use_stats(self, stats): ...                 # optional: derive again what it reads from the statistics,
                                                        # φ kept (`meta.gradstat_refresh` needs it; `StatsRule` has it)

`learned`: its parameters are φ (stage 2 trains them, a checkpoint stores its state dict, evaluation runs it as the
method `learned`); a fixed rule is run by evaluation and stage 2's validation under its own name. The schema (a
dataclass whose `name` field defaults to the rule's name) is stored as the Hydra node `rule/base_<name>`, which
conf/rule/<name>.yaml extends: its defaults are the rule's only defaults. A schema may declare `ranges`
(`ClassVar`: key -> (low, high, low allowed[, high allowed]), as `dynlm.config.RANGES`).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import DynlmError, check_range
from .grad_stats import GradStats

GROUP = "rule"  # the Hydra group (conf/rule/) and the config section (cfg.rule)
LEARNED = "learned"  # the method name of a checkpoint's learned rule (evaluation, stage 2's validation)


class RuleConfigError(DynlmError, ValueError):
    """An unknown rule, or a rule config that does not fit the rule."""


@dataclass(frozen=True)
class RuleSpec:
    name: str
    cls: type
    config: type  # the dataclass schema of cfg.rule
    learned: bool

    @property
    def keys(self) -> List[str]:
        """The constructor's keywords: the schema's fields but `name`."""
        return [f.name for f in dataclasses.fields(self.config) if f.name != "name"]


_RULES: Dict[str, RuleSpec] = {}


def register_rule(name: str, config: type, learned: bool):
    """Class decorator: register the rule `name`, built from `config` (see the module docstring)."""
    def register(cls: type) -> type:
        spec = RuleSpec(name, cls, config, learned)
        _check_contract(spec)
        _RULES[name] = spec
        ConfigStore.instance().store(group=GROUP, name=f"base_{name}", node=config)
        return cls

    return register


def _check_contract(spec: RuleSpec) -> None:
    """The schema names the rule and holds exactly the constructor's keywords, which have no defaults of their own."""
    fields = {f.name: f for f in dataclasses.fields(spec.config)}
    if "name" not in fields or fields["name"].default != spec.name:
        raise TypeError(f"the config schema of rule {spec.name!r} needs a field `name: str = {spec.name!r}`")
    params = list(inspect.signature(spec.cls.__init__).parameters.values())[3:]  # self, names, stats
    keywords = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if keywords != set(spec.keys):
        raise TypeError(f"rule {spec.name!r}: {spec.cls.__name__}'s keywords {sorted(keywords)} are not its config's "
                        f"keys {sorted(spec.keys)}")
    defaulted = [p.name for p in params if p.default is not p.empty]
    if defaulted:
        raise TypeError(f"rule {spec.name!r}: {spec.cls.__name__} gives {defaulted} defaults; only its config may")


def unregister_rule(name: str) -> None:
    """Forget a rule (tests that register one of their own); its Hydra node stays in the ConfigStore."""
    _RULES.pop(name, None)


def rule_names(learned: Optional[bool] = None) -> List[str]:
    """The registered rules (in registration order), or only the learned (`True`) or the fixed (`False`) ones."""
    return [n for n, s in _RULES.items() if learned is None or s.learned == learned]


def rule_spec(name: str) -> RuleSpec:
    if name not in _RULES:
        raise RuleConfigError(f"unknown update rule {name!r}: use " + ", ".join(f"rule={n}" for n in _RULES))
    return _RULES[name]


def _plain(cfg: Any) -> Dict[str, Any]:
    return dict(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)


def rule_config(name: str, like: Optional[Mapping[str, Any]] = None) -> DictConfig:
    """The rule `name`'s config: its defaults, with the keys of `like` (another rule's config) that it has too. A
    learned rule that starts as Krause's rule and dynamic evaluation then share η, λ and ε."""
    spec = rule_spec(name)
    shared = {k: v for k, v in _plain(like or {}).items() if k in spec.keys}
    return OmegaConf.merge(OmegaConf.structured(spec.config), shared)


def check_rule_config(cfg: Any) -> RuleSpec:
    """`cfg.rule` names a registered rule, holds its keys only, and every value is in its range."""
    plain = _plain(cfg)
    spec = rule_spec(plain.get("name"))
    kind = OmegaConf.get_type(cfg) if isinstance(cfg, DictConfig) else None
    if dataclasses.is_dataclass(kind) and kind is not spec.config:
        raise RuleConfigError(f"rule.name={spec.name} does not choose the rule: choose it with rule={spec.name}")
    unknown = sorted(set(plain) - set(spec.keys) - {"name"})
    if unknown:
        raise RuleConfigError(f"rule {spec.name} has no key(s) {unknown}: its keys are {spec.keys}")
    for key, bounds in getattr(spec.config, "ranges", {}).items():
        check_range(f"{GROUP}.{key}", plain.get(key, getattr(spec.config, key)), bounds)
    return spec


def build_rule(cfg: Any, names: Sequence[str], stats: GradStats) -> nn.Module:
    """The rule `cfg` (a `rule` config node: its `name` and keys) over the dynamic `names`, at its initial φ."""
    spec = check_rule_config(cfg)
    cfg.get("name")  # read, as every key below, from the node given (its reads are what the key tests record)
    defaults = rule_config(spec.name)
    return spec.cls(names, stats, **{k: cfg.get(k, defaults[k]) for k in spec.keys})


__all__ = ["GROUP", "LEARNED", "RuleConfigError", "RuleSpec", "build_rule", "check_rule_config", "register_rule",
           "rule_config", "rule_names", "rule_spec", "unregister_rule"]
