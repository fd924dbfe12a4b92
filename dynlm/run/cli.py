"""The scripts' command line (scripts/train.py, scripts/evaluate.py).

- An unknown config key fails before any work, with the closest known key, however it was given.
- dynlm's own errors (`DynlmError`: config, data, checkpoint, run folder) print as one line and exit 1; their
  traceback says nothing more to a user. `HYDRA_FULL_ERROR=1` shows it, as it does for Hydra's own errors.
- `--help` is generated from the schema and its field comments, so it lists what the script takes.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import sys
import textwrap
import tokenize
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, get_type_hints

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..config import DynlmError


class UnknownKeyError(DynlmError, ValueError):
    """A config key the script's schema does not have."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a `DynlmError` as one line and exit 1; anything else (a bug) keeps its traceback."""
    try:
        yield
    except DynlmError as e:
        # in a sweep (-m), Hydra runs the other jobs first, then reports the first failure: leave it that way
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_sweep():
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _schema_tree(schema) -> Dict[str, Any]:
    """The schema's keys as nested dicts: a section is a dict, a key of any other type a leaf."""
    return OmegaConf.to_container(OmegaConf.structured(schema))  # type: ignore[return-value]


def _dotted(tree: Dict[str, Any], prefix: str = "") -> Iterator[str]:
    for k, v in tree.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _dotted(v, f"{prefix}{k}.")


def _unknown(given: Dict[str, Any], schema: Dict[str, Any], prefix: str = "") -> List[str]:
    """The outermost keys of `given` that `schema` lacks."""
    out = []
    for k, v in given.items():
        if k not in schema:
            out.append(prefix + k)
        elif isinstance(v, dict) and isinstance(schema[k], dict):
            out += _unknown(v, schema[k], f"{prefix}{k}.")
    return out


def _raise_unknown(keys: List[str], schema) -> None:
    if not keys:
        return
    known = list(_dotted(_schema_tree(schema)))
    named = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    script = sys.argv[0]
    raise UnknownKeyError(f"unknown config key {', '.join(named)}: not in the config schema of {script}. "
                          f"`python {script} --help` lists every key.")


def check_overrides(args: List[str], schema, conf_dir: Optional[Path] = None) -> None:
    """Before Hydra starts (and makes a run folder): every `key=value`, `+key=value` and `++key=value` names a
    key of `schema`, or a config group of `conf_dir` (`+experiment=...`, whose options set keys of the schema).
    Hydra rejects an unknown plain key too, but names no close key and suggests `+key=value`, which its struct
    check lets through (`check_config` would stop it later)."""
    keys = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:  # flags (--cfg job, -m) and their values
            continue
        key = arg.split("=", 1)[0].lstrip("+")
        # ~key deletes; group/option, @package and hydra.* are Hydra's own
        if key and not key.startswith("~") and "/" not in key and "@" not in key and key.split(".")[0] != "hydra":
            keys.append(key)
    known = set(_dotted(_schema_tree(schema)))
    _raise_unknown([k for k in keys if k not in known and not (conf_dir is not None and (conf_dir / k).is_dir())],
                   schema)


def check_config(cfg: DictConfig, schema) -> None:
    """Every key of the composed config is in `schema`, however it got there (`+key=...` past the struct flag, a
    config of one's own without the schema: --config-dir/--config-name): the run would ignore it."""
    _raise_unknown(_unknown(OmegaConf.to_container(cfg, resolve=False), _schema_tree(schema)), schema)


# --help -------------------------------------------------------------------------------------------------------

def field_docs(schema) -> Dict[str, str]:
    """Each field's comment in the schema's source (the one on its line, else the lines just above it), cut to
    its first sentence."""
    lines, _ = inspect.getsourcelines(schema)
    comments = {t.start[0] - 1: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(iter(lines).__next__) if t.type == tokenize.COMMENT}
    docs = {}
    for node in ast.parse(textwrap.dedent("".join(lines))).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line = node.lineno - 1
        text = comments.get(line)  # on the field's own line
        if text is None:  # else the comment lines just above it
            top = line
            while top > 0 and lines[top - 1].strip().startswith("#"):
                top -= 1
            text = " ".join(comments[i] for i in range(top, line))
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", text)[0]
        docs[node.target.id] = textwrap.shorten(sentence, 110, placeholder=" …")
    return docs


def _fmt(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value) if value != "" else "''"


def _key_rows(schema, values: Dict[str, Any], prefix: str = "") -> Iterator[Tuple[str, str]]:
    """(key=current value, description) per key; a section starts after a blank row, with its own comment."""
    docs, types = field_docs(schema), get_type_hints(schema)
    for f in fields(schema):
        if is_dataclass(types[f.name]):
            yield "", ""
            if docs[f.name]:
                yield f"{prefix}{f.name}.*", docs[f.name]
            yield from _key_rows(types[f.name], values.get(f.name) or {}, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}={_fmt(values.get(f.name))}", docs[f.name]


def help_text(schema, about: str, root: DictConfig) -> str:
    """The script's `--help`: its groups and their options, then every key with its value and comment."""
    script = sys.argv[0]
    loader = GlobalHydra.instance().config_loader()
    out = [about.strip(), "", f"Usage: python {script} [GROUP=OPTION ...] [KEY=VALUE ...]", "",
           "Groups (an option sets several keys at once; * marks the current one):"]
    for group, chosen in sorted(root.hydra.runtime.choices.items()):
        if not group.startswith("hydra/"):  # base_* are the schemas themselves (dynlm/config.py), not options
            options = [o for o in loader.get_group_options(group) if not o.startswith("base_")]
            out.append(f"  {group}=" + "|".join(o + "*" * (o == chosen) for o in options))
    out += ["", "Keys (KEY=VALUE; the values shown are the current ones):"]
    values = OmegaConf.to_container(root, resolve=False)
    rows = list(_key_rows(schema, values))
    width = min(34, max(len(k) for k, _ in rows))
    out += [f"  {k:<{width}}  {d}".rstrip() if k else "" for k, d in rows]
    out += ["", "--cfg job prints the composed config as YAML, -m sweeps (KEY=a,b), --hydra-help lists Hydra's "
            "own flags."]
    return "\n".join(out)


def register_help(schema, about: str) -> None:
    """`--help` prints `help_text`: conf/config.yaml and conf/evaluate.yaml set hydra.help.template to
    ${dynlm_help:}, which Hydra resolves (with `_root_`, the composed config) only to print the help."""
    def resolve(*, _root_: DictConfig) -> str:
        return help_text(schema, about, _root_).replace("$", "$$")  # the template goes through string.Template

    OmegaConf.register_new_resolver("dynlm_help", resolve, replace=True)


__all__ = ["UnknownKeyError", "check_config", "check_overrides", "field_docs", "help_text", "register_help",
           "user_errors"]
