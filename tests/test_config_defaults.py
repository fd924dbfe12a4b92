"""Defaults come from one source, the schemas of dynlm/config.py: a group option sets only what differs from them."""
from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from dynlm.config import Config
from dynlm.dynamic.rules import GROUP, rule_spec
from hydra_helpers import CONF_DIR, compose_config, group_options


def _rule_schema(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(rule_spec(name).config))


def test_the_default_choices_add_nothing_to_the_schema():
    composed = OmegaConf.to_container(compose_config([]))
    schema = OmegaConf.to_container(OmegaConf.structured(Config))
    rule = composed.pop(GROUP)
    assert schema.pop(GROUP) == "???"  # the rule's schema is the chosen rule's own
    assert composed == schema
    assert rule == _rule_schema(rule["name"])


SCHEMA = OmegaConf.to_container(OmegaConf.structured(Config))
# the options of the groups that fill one section of the config each (experiments set keys across sections)
SECTION_OPTIONS = [(g, o) for g, o in group_options() if g in SCHEMA and (CONF_DIR / g / f"{o}.yaml").is_file()]


@pytest.mark.parametrize("group,option", SECTION_OPTIONS)
def test_an_option_sets_only_what_differs_from_the_schema(group, option):
    """A key an option repeats at its schema default is a second source of that default, free to drift from it."""
    path = CONF_DIR / group / f"{option}.yaml"
    schema = _rule_schema(option) if group == GROUP else SCHEMA[group]
    written = {k: v for k, v in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items() if k != "defaults"}
    assert {k: v for k, v in written.items() if schema.get(k) == v} == {}
