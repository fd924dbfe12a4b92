"""The scripts' command line (scripts/train.py, scripts/evaluate.py).

- An unknown config key, a group option that is not one of the group's YAML files, a value of the wrong type and
  a run folder that cannot be written fail before any work, each with one line naming the closest choice or fix;
  a renamed key (`dynlm.config.RENAMED_KEYS`) with its new name. A config group whose options have schemas of
  their own (`rule`) is checked against the schema of the option chosen.
- dynlm's own errors (`DynlmError`: config, data, checkpoint, run folder) print as one line and exit 1; their
  traceback says nothing more to a user. `HYDRA_FULL_ERROR=1` shows it, as it does for Hydra's own errors.
  Under torchrun the line is printed once for the job, and its restarts stop at once (`dist.claim_user_error`).
- Ctrl-C prints one line (what was saved, how to resume: `scaffold.TrainingInterrupted`) and exits 130.
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

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import BooleanNode, DictConfig, FloatNode, IntegerNode, ListConfig, OmegaConf, StringNode
from omegaconf.errors import OmegaConfBaseException

from .. import dist
from ..config import DynlmError, renamed_message
from .groups import check_option, composed_config_dirs, config_dirs, find_group, group_options, is_global_group
from .setup import check_writable


class UnknownKeyError(DynlmError, ValueError):
    """A config key the script's schema does not have."""


INTERRUPTED = 130  # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)
# Ctrl-C outside a training loop (which says what it saved: `scaffold.TrainingInterrupted`)
NOTHING_SAVED = "interrupted (Ctrl-C) before any checkpoint or result was saved: run the same command again"


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a `DynlmError` as one line and exit 1, Ctrl-C as one line and exit 130; anything else (a bug) keeps
    its traceback. A restart of a torchrun job that an earlier attempt stopped on a user error stops at once: it
    would only fail the same way."""
    stopped = dist.user_error_of_job()
    if stopped is not None:
        dist.tell_torchrun(stopped)
        sys.exit(1)
    try:
        yield
    except DynlmError as e:
        # in a sweep (-m), Hydra runs the other jobs first, then reports the first failure: leave it that way
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_sweep():
            raise
        line = f"error: {e}"
        if dist.claim_user_error(line):
            print(line, file=sys.stderr)
        dist.tell_torchrun(line)
        sys.exit(1)
    except KeyboardInterrupt as e:  # a sweep stops too: no other job starts
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        line = f"error: {str(e) or NOTHING_SAVED}"
        if os.environ.get("RANK", "0") == "0":  # every rank of a torchrun job gets the Ctrl-C
            print(line, file=sys.stderr)
        sys.exit(INTERRUPTED)


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


class OverrideError(DynlmError, ValueError):
    """A command-line override that cannot be read, or whose value the key's type does not take."""


def _overrides(args: List[str]) -> List[Tuple[str, Override]]:
    """(as given, parsed) for each `key=value`, `+key=value`, `++key=value`, `~key` among the arguments."""
    parser, out = OverridesParser.create(), []
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):  # flags (--cfg job, -m), values
            continue
        try:
            out.append((arg, parser.parse_override(arg)))
        except HydraException as e:
            raise OverrideError(f"cannot read {arg!r} ({e}): write KEY=VALUE, with quotes around a value that has "
                                "spaces or special characters") from None
    return out


def _values(override: Override) -> List[Any]:
    """The values an override sets: one, or each of a choice or range sweep (-m); none known for other sweeps."""
    if not override.is_sweep_override():
        return [override.value()]
    if override.is_choice_sweep() or override.is_range_sweep():
        return list(override.sweep_iterator())
    return []


_KINDS = {IntegerNode: "an integer", FloatNode: "a number", BooleanNode: "true or false", StringNode: "a string",
          ListConfig: "a list ([a,b])", DictConfig: "a section of keys"}


def _check_type(key: str, value: Any, config: DictConfig) -> None:
    """`key=value` as Hydra applies it to the schema: one line naming the type the key takes, not Hydra's six."""
    try:
        OmegaConf.update(config, key, value, merge=True)
    except OmegaConfBaseException:
        node = config._get_node(key.split(".")[0])
        for part in key.split(".")[1:]:
            node = node._get_node(part)
        kind = _KINDS.get(type(node), "another type")
        raise OverrideError(f"{key}={_fmt(value)}: {key} takes {kind}{' or null' if node._is_optional() else ''}, "
                            f"not {value!r}") from None


def _refuse_other_options_keys(keys: List[str], group: str, chosen: str, options: Mapping[str, type]) -> None:
    """A `group.key` that only other options of the group have would be ignored under `chosen`."""
    mine = _schema_tree(options[chosen])
    for key in keys:
        section, _, name = key.partition(".")
        owners = [o for o, s in options.items() if name in _schema_tree(s)]
        if section == group and name not in mine and owners:
            raise UnknownKeyError(f"{key} has no effect with {group}={chosen}: it is a key of "
                                  + " and ".join(f"{group}={o}" for o in owners) + f"; remove it, or choose "
                                  f"{group}={owners[0]}")


def check_overrides(args: List[str], schema, conf_dir: Path,
                    group_schemas: Optional[Mapping[str, Mapping[str, type]]] = None) -> None:
    """Before Hydra starts (and makes a run folder), one line for what Hydra would report in many, or not at all:
    - a renamed key or group (`dynlm.config.RENAMED_KEYS`) names its new name;
    - every `key=value`, `+key=value` and `++key=value` names a key of `schema`, or of the schema of the option
      chosen for a group of `group_schemas` (group -> option -> schema; the default option is the one
      conf_dir/config.yaml names). Hydra rejects an unknown plain key too, but names no close key and suggests
      `+key=value`, which its struct check lets through;
    - a group option is one of the YAML files of conf/<group>/ (or --config-dir's), not a schema node or a typo;
    - a value has its key's type;
    - the run folder given with hydra.run.dir can be written."""
    dirs = config_dirs(args, conf_dir)
    parsed = _overrides(args)
    for arg, override in parsed:
        renamed = renamed_message(override.key_or_group, arg.split("=", 1)[1] if "=" in arg else "")
        if renamed:
            raise UnknownKeyError(f"{renamed}. `python {sys.argv[0]} --help` lists every key.")
    tree, typed = _schema_tree(schema), OmegaConf.structured(schema)
    keys = [override.key_or_group for _, override in parsed if not override.is_delete()]
    for group, options in (group_schemas or {}).items():
        chosen = _chosen(args, group, Path(conf_dir) / "config.yaml")
        if chosen not in options:
            check_option(group, str(chosen), dirs)  # a typo: the closest YAML file
            choices = ", ".join(f"{group}={o}" for o in options)
            raise UnknownKeyError(f"unknown {group}={chosen}: choose among {choices}")
        _refuse_other_options_keys(keys, group, chosen, options)
        tree[group] = _schema_tree(options[chosen])
        typed[group] = OmegaConf.structured(options[chosen])
    known, sections = set(_dotted(tree)), set(tree)
    unknown = []
    for _arg, override in parsed:
        key = override.key_or_group
        if key.split(".")[0] == "hydra" or key.startswith("hydra/"):  # Hydra's own
            if key == "hydra.run.dir" and not override.is_sweep_override() and "${" not in str(override.value()):
                check_writable(Path(str(override.value())))
            continue
        if override.is_delete():
            continue
        group = find_group(key, dirs)
        if group is not None and (group.split("/")[0] in sections or is_global_group(group, dirs)):
            for option in _values(override):
                check_option(group, str(option), dirs)
        elif key not in known:
            unknown.append(key)
        elif override.package is None:
            for value in _values(override):
                _check_type(key, value, typed)
    _raise_unknown(unknown, tree)


def check_chosen_options() -> None:
    """Within a Hydra job: every group option it composed is one of the group's YAML files, however it was chosen
    (the command line, a defaults list of one's own)."""
    dirs = composed_config_dirs()
    for group, option in HydraConfig.get().runtime.choices.items():
        if option is not None and find_group(group, dirs) is not None:
            check_option(group, option, dirs)


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
    config of one's own without the schema: --config-dir/--config-name): the run would ignore it. Within a Hydra
    job, its group options are checked too (`check_chosen_options`)."""
    if HydraConfig.initialized():
        check_chosen_options()
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
    dirs = composed_config_dirs()
    out = [about.strip(), "", f"Usage: python {script} [GROUP=OPTION ...] [KEY=VALUE ...]", "",
           "Groups (an option sets several keys at once; * marks the current one):"]
    for group, chosen in sorted(root.hydra.runtime.choices.items()):
        if find_group(group, dirs) is not None:  # not Hydra's own
            options = group_options(group, dirs)  # its YAML files: the schema nodes beside them are not options
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


__all__ = ["INTERRUPTED", "OverrideError", "UnknownKeyError", "check_chosen_options", "check_config",
           "check_overrides", "field_docs", "help_text", "register_help", "user_errors"]
