"""The package's layers only point down, and no two modules import each other (directly or in a circle).

data → maths (the reference maths) → kernels (the fast forms of it) → model → dynamic (medium-term memory) → run
(infrastructure) → train | eval, with config/cache/dist beneath everything. train and eval are siblings: neither
imports the other. Imports inside functions count.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
LAYERS: List[List[str]] = [
    ["dynlm", "dynlm.config", "dynlm.cache", "dynlm.dist"],
    ["dynlm.data"],
    ["dynlm.maths"],
    ["dynlm.kernels"],
    ["dynlm.model"],
    ["dynlm.dynamic"],
    ["dynlm.run"],
    ["dynlm.train", "dynlm.eval"],
]
Edge = Tuple[str, str, int]  # importer, imported, line


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def package_edges(root: Path = ROOT / "dynlm") -> List[Edge]:
    """Every import of a dynlm module by a dynlm module."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        me = _module(path)
        package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from pkg import name` imports pkg
                targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
            else:
                continue
            edges += [(me, t, node.lineno) for t in dict.fromkeys(targets) if t.split(".")[0] == "dynlm" and t != me]
    return edges


def layer_of(module: str) -> Tuple[int, str]:
    """(layer index, the package that module belongs to) by the longest matching prefix."""
    best = None
    for i, packages in enumerate(LAYERS):
        for p in packages:
            if module == p or module.startswith(p + ".") and p != "dynlm":
                if best is None or len(p) > len(best[1]):
                    best = (i, p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def upward_imports(edges: Iterable[Edge]) -> List[str]:
    """Imports of a higher layer, or of a sibling package of the same layer."""
    bad = []
    for a, b, line in edges:
        (la, pa), (lb, pb) = layer_of(a), layer_of(b)
        if lb > la or (lb == la and pa != pb):
            bad.append(f"{a}:{line} imports {b} ({pb} is {'above' if lb > la else 'beside'} {pa})")
    return bad


def cycles(edges: Iterable[Edge]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down():
    edges = package_edges()
    assert len(edges) > 50  # the walk sees the package's imports
    assert upward_imports(edges) == []


def test_no_modules_import_each_other():
    assert cycles(package_edges()) == []


def test_the_checks_catch_an_upward_import_a_sibling_import_and_a_cycle():
    assert upward_imports([("dynlm.model.lstm", "dynlm.dynamic.reading", 3)])
    assert upward_imports([("dynlm.train.lm_trainer", "dynlm.eval.aggregate", 4)])
    assert upward_imports([("dynlm.dist", "dynlm.config", 5)])  # foundation modules stand alone
    assert not upward_imports([("dynlm.eval.methods", "dynlm.dynamic.reading", 6),
                               ("dynlm.data.split", "dynlm.data", 1)])
    assert cycles([("dynlm.data.a", "dynlm.data.b", 1), ("dynlm.data.b", "dynlm.data.c", 1),
                   ("dynlm.data.c", "dynlm.data.a", 1)]) == [["dynlm.data.a", "dynlm.data.b", "dynlm.data.c"]]
