"""Config groups and the options a user may choose in them: the YAML files of conf/<group>/.

Hydra also offers the nodes of a group in the ConfigStore as options, and there dynlm keeps its schemas
(`register_configs`): `model=base_model` would compose a full-size model from the dataclass defaults. Every group
of the config folders and the ConfigStore is checked the same way, so a new group needs nothing here.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from ..config import DynlmError


class GroupOptionError(DynlmError, ValueError):
    """A group option that no YAML file of the group's folder defines."""


def config_dirs(args: Sequence[str], conf_dir: Path) -> List[Path]:
    """The script's config folder and any given with --config-dir/-cd."""
    dirs, args = [Path(conf_dir)], list(args)
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(Path(args[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def composed_config_dirs() -> List[Path]:
    """Within a Hydra job: the file folders of its config search path."""
    return [Path(s.path) for s in HydraConfig.get().runtime.config_sources if s.schema == "file" and s.path]


def _schema_nodes(group: str) -> List[str]:
    node = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return sorted(n[: -len(".yaml")] for n, v in node.items() if not isinstance(v, dict)) if node else []


def _is_group(group: str, dirs: Sequence[Path]) -> bool:
    return any((d / group).is_dir() for d in dirs) or bool(_schema_nodes(group))


def group_options(group: str, dirs: Sequence[Path]) -> List[str]:
    """The options of `group`: its YAML files (sub/option for those in subfolders), never its schema nodes."""
    found = set()
    for d in dirs:
        folder = d / group
        if folder.is_dir():
            found |= {p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")}
    return sorted(found)


_GLOBAL_HEADER = re.compile(r"^#\s*@package\s+_global_\s*$", re.M)


def is_global_group(group: str, dirs: Sequence[Path]) -> bool:
    """Whether the group's options set keys anywhere in the config (`# @package _global_`, as an experiment
    group's do), rather than under a section named after the group."""
    return any(_GLOBAL_HEADER.search(p.read_text(encoding="utf-8")[:2000])
               for d in dirs if (d / group).is_dir() for p in (d / group).rglob("*.yaml"))


def find_group(key: str, dirs: Sequence[Path]) -> Optional[str]:
    """`key` as a group of the config folders or ConfigStore (Hydra's own hydra/* aside), else None."""
    if key == "hydra" or key.startswith("hydra/") or not key:
        return None
    return key if _is_group(key, dirs) else None


def check_option(group: str, option: str, dirs: Sequence[Path]) -> None:
    """`group=option` names one of the group's YAML files; otherwise one line with the closest option."""
    options = group_options(group, dirs)
    if option in options:
        return
    listed = ", ".join(options) if options else "none"
    if option in _schema_nodes(group):
        problem = f"{group}={option} is the schema of the {group} group (dynlm/config.py), not one of its options"
    else:
        close = difflib.get_close_matches(option, options, n=1)
        problem = f"{group}={option}: the {group} group has no option {option!r}" + (
            f" (did you mean {group}={close[0]}?)" if close else "")
    where = " or ".join(str(d / group) for d in dirs if (d / group).is_dir()) or f"a folder {group}/"
    raise GroupOptionError(f"{problem}. Choose one of: {listed} (the YAML files in {where}).")


__all__ = ["GroupOptionError", "check_option", "composed_config_dirs", "config_dirs", "find_group",
           "group_options", "is_global_group"]
