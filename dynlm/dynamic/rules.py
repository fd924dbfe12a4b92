"""The update rules dynlm ships, registered (`registry.py`) by importing their files: Krause's fixed rule
(`dyneval.py`), the learned per-coordinate gated rule (`meta_learner.py`) and the learned per-tensor scales of
Krause's rule (`cheap_learner.py`). Import the registry's functions from here, so that every rule is registered
before a config is composed or a rule is looked up.

`upgrade_config` is the one place that knows the config layout checkpoints were written with before rules had a
`rule` node of their own.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

from ..config import RENAMED_KEYS
from . import cheap_learner, dyneval, meta_learner  # noqa: F401 - registers the built-in rules
from .registry import (
    GROUP,
    LEARNED,
    RuleConfigError,
    RuleSpec,
    build_rule,
    check_rule_config,
    register_rule,
    rule_config,
    rule_names,
    rule_spec,
    unregister_rule,
)

OLD_DEFAULT_RULE = "gated"  # what a checkpoint meant when its meta config named no rule


def upgrade_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint's stored config in today's layout. Before the `rule` node, `meta` held every rule's keys
    (`meta.name` the rule, `meta.lr` its η) beside stage 2's; they move to `rule` (those the named rule has) and
    stage 2's renamed keys take their new names (`dynlm.config.RENAMED_KEYS`). Today's configs come back as given."""
    meta = config.get("meta")
    if GROUP in config or not isinstance(meta, dict):
        return config
    new = copy.deepcopy(config)
    meta = new["meta"]
    spec = rule_spec(meta.pop("name", None) or OLD_DEFAULT_RULE)
    rule = {"name": spec.name}
    for old, key in RENAMED_KEYS.items():
        section, old_name = old.split(".", 1)
        if section != "meta" or old_name not in meta:
            continue
        value = meta.pop(old_name)
        target, new_name = key.split(".", 1)
        if target == GROUP and new_name in spec.keys:
            rule[new_name] = value
        elif target == "meta":
            meta[new_name] = value
    new[GROUP] = rule
    return new


__all__ = ["GROUP", "LEARNED", "RuleConfigError", "RuleSpec", "build_rule", "check_rule_config", "register_rule",
           "rule_config", "rule_names", "rule_spec", "unregister_rule", "upgrade_config"]
