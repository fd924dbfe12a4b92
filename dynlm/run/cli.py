"""The scripts' command line (scripts/train.py, scripts/evaluate.py).

- An unknown config key fails before any work, with the closest known key, however it was given; a renamed one
  (`dynlm.config.RENAMED_KEYS`) with its new name. A config group whose options have schemas of their own (`rule`)
  is checked against the schema of the option chosen.
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
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, get_type_hints

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..config import DynlmError, renamed_message


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


def _raise_unknown(keys: List[str], tree: Dict[str, Any]) -> None:
    if not keys:
        return
    known = list(_dotted(tree))
    named = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    script = sys.argv[0]
    raise UnknownKeyError(f"unknown config key {', '.join(named)}: not in the config schema of {script}. "
                          f"`python {script} --help` lists every key.")


def _chosen(args: List[str], group: str, config_file: Path) -> Optional[str]:
    """The option of `group` the command line chooses, else the one the primary config's defaults list names."""
    for arg in reversed(args):
        key, _, value = arg.partition("=")
        if key.lstrip("+") == group and value:
            return value
    for entry in OmegaConf.load(config_file).get("defaults", []):
        if isinstance(entry, Mapping) and group in entry:
            return str(entry[group])
    return None


def check_overrides(args: List[str], schema, group_schemas: Optional[Mapping[str, Mapping[str, type]]] = None,
                    config_file: Optional[Path] = None) -> None:
    """Before Hydra starts (and makes a run folder): every `key=value`, `+key=value` and `++key=value` names a
    key of `schema`, or of the schema of the option chosen for a group of `group_schemas` (group -> option ->
    schema; the default option is read from `config_file`). Hydra rejects an unknown plain key too, but names no
    close key and suggests `+key=value`, which its struct check lets through (`check_config` would stop it later)."""
    keys = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:  # flags (--cfg job, -m) and their values
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        renamed = renamed_message(key, value)
        if renamed:
            raise UnknownKeyError(f"{renamed}. `python {sys.argv[0]} --help` lists every key.")
        # ~key deletes; group/option, @package and hydra.* are Hydra's own
        if key and not key.startswith("~") and "/" not in key and "@" not in key and key.split(".")[0] != "hydra":
            keys.append(key)
    tree = _schema_tree(schema)
    for group, options in (group_schemas or {}).items():
        chosen = _chosen(args, group, config_file)
        if chosen not in options:
            raise UnknownKeyError(f"unknown {group}={chosen}: choose among " + ", ".join(f"{group}={o}" for o in options))
        tree[group] = _schema_tree(options[chosen])
        for key in keys:
            section, _, name = key.partition(".")
            owners = [o for o, s in options.items() if name in _schema_tree(s)]
            if section == group and name not in tree[group] and owners:
                raise UnknownKeyError(f"{key} has no effect with {group}={chosen}: it is a key of "
                                      + " and ".join(f"{group}={o}" for o in owners) + f"; remove it, or choose "
                                      f"{group}={owners[0]}")
    known = set(_dotted(tree))
    groups = config_file.parent if config_file is not None else None  # `+experiment=...` sets keys of the schema
    _raise_unknown([k for k in keys if k not in known and not (groups is not None and (groups / k).is_dir())], tree)


def _composed_tree(cfg: DictConfig, schema) -> Dict[str, Any]:
    """`schema`'s keys, a section whose schema is its group option's (`rule: Any`) with that option's keys."""
    tree = _schema_tree(schema)
    for k, v in tree.items():
        node = cfg.get(k) if not isinstance(v, dict) else None
        if isinstance(node, DictConfig) and is_dataclass(OmegaConf.get_type(node)):
            tree[k] = _schema_tree(OmegaConf.get_type(node))
    return tree


def check_config(cfg: DictConfig, schema) -> None:
    """Every key of the composed config is in `schema`, however it got there (`+key=...` past the struct flag, a
    config of one's own without the schema: --config-dir/--config-name): the run would ignore it."""
    tree = _composed_tree(cfg, schema)
    _raise_unknown(_unknown(OmegaConf.to_container(cfg, resolve=False), tree), tree)


# --help -------------------------------------------------------------------------------------------------------

def field_docs(schema) -> Dict[str, str]:
    """Each field's comment in the schema's source (the one on its line, else the lines just above it), cut to
    its first sentence; an inherited field's from the class that defines it (the nearest one that comments it)."""
    docs: Dict[str, str] = {}
    for cls in reversed([c for c in schema.__mro__ if is_dataclass(c)]):
        docs.update({k: v for k, v in _own_field_docs(cls).items() if v or k not in docs})
    return docs


def _own_field_docs(schema) -> Dict[str, str]:
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


def _key_rows(schema, values: Dict[str, Any], prefix: str = "", chosen: Optional[Mapping[str, type]] = None
              ) -> Iterator[Tuple[str, str]]:
    """(key=current value, description) per key; a section starts after a blank row, with its own comment.
    `chosen`: the schema of a section whose schema is its group option's (`rule: Any`)."""
    docs, types = field_docs(schema), {**get_type_hints(schema), **(chosen or {})}
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
    chosen = {k: OmegaConf.get_type(v) for k, v in root.items_ex(resolve=False)
              if isinstance(v, DictConfig) and is_dataclass(OmegaConf.get_type(v))}
    rows = list(_key_rows(schema, values, chosen=chosen))
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
