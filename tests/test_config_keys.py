"""Every config key has an effect: each field of the config schemas is read somewhere in the library."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Iterable, List, Set

from dynlm.config import Config, DataConfig, LoggerConfig, MetaConfig, ModelConfig, OptimConfig, TrainerConfig
from dynlm.eval.config import EvalOptions, EvalRunConfig

PKG = Path(__file__).resolve().parents[1] / "dynlm"
SCHEMA_FILES = {PKG / "config.py", PKG / "eval" / "config.py"}
SCHEMAS = (Config, DataConfig, ModelConfig, OptimConfig, TrainerConfig, LoggerConfig, MetaConfig, EvalOptions,
           EvalRunConfig)


def names_read(files: Iterable[Path]) -> Set[str]:
    """Attribute names read (`cfg.key`) and string constants (`cfg["key"]`, `cfg.get("key")`) in `files`."""
    seen: Set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                seen.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                seen.add(node.value)
    return seen


def unread_fields(schemas, read: Set[str]) -> List[str]:
    return [f"{s.__name__}.{f.name}" for s in schemas for f in dataclasses.fields(s) if f.name not in read]


def test_every_schema_field_is_read_outside_the_schemas():
    code = [p for p in PKG.rglob("*.py") if p not in SCHEMA_FILES]
    assert unread_fields(SCHEMAS, names_read(code)) == []


def test_an_unread_field_is_reported():
    @dataclasses.dataclass
    class Probe:
        hidden_size: int = 1
        a_key_nothing_reads: int = 0

    assert unread_fields([Probe], names_read(PKG.rglob("*.py"))) == ["Probe.a_key_nothing_reads"]
