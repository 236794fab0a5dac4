"""The package's import structure: imports flow one way, with no cycles and no hidden edges.

Every module of ``offseg_vis`` is parsed with ``ast`` (nothing is imported), and every ``import`` /
``from ... import`` of our own modules is collected, at module level and inside functions alike.
The layers, bottom to top: ``constants``/``errors`` <- ``models`` <- ``data``/``engine`` <- ``deploy``
<- ``analysis``/``experiment`` <- ``bench``/``app``/``cli``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "offseg_vis"

# Which of our packages each package may import (itself always).
ALLOWED = {
    "constants": set(),
    "errors": set(),
    "models": {"constants", "errors"},
}
FORBIDDEN = {
    # "offseg_vis" is the package's __init__, which imports models
    "data": {"offseg_vis", "models", "engine", "analysis", "app", "bench", "experiment", "deploy", "cli"},
    "engine": {"analysis", "app", "bench", "experiment", "deploy", "cli"},
}

# Known violations, edge by edge (importing module, imported package), each with its reason; the
# test fails when one disappears, so this list cannot go stale.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

# Imports inside functions under offseg_vis/models (importer, imported): each hides an edge.
# Before the registry (issue 14) there were 13; the one left is weights.classifier_kind.
MODELS_FUNCTION_LEVEL_IMPORTS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    importer: str  # module name, e.g. "offseg_vis.models.zoo"
    target: str  # imported module (or package) name, e.g. "offseg_vis.models.registry"
    in_function: bool
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _edges(modules: dict[str, Path]) -> list[Edge]:
    """Every import of one of our modules, resolved to the most specific module that exists
    (``from offseg_vis.models import zoo`` -> ``offseg_vis.models.zoo``)."""
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        in_function = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_function.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target == "offseg_vis" or target.startswith("offseg_vis."):
                    edges.append(Edge(name, target, id(node) in in_function, node.lineno))
    return edges


def _package(module: str) -> str:
    """offseg_vis.models.zoo -> "models"; offseg_vis.constants -> "constants"; offseg_vis -> "offseg_vis"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def graph():
    modules = _all_modules()
    return modules, _edges(modules)


def test_the_parser_sees_known_edges(graph):
    """The walker finds top-level, function-level and ``from package import module`` edges (so the
    other tests cannot pass by seeing nothing)."""
    modules, edges = graph
    assert len(modules) > 60
    found = {(e.importer, e.target, e.in_function) for e in edges}
    assert ("offseg_vis.models.zoo", "offseg_vis.models.registry", False) in found
    assert ("offseg_vis.models", "offseg_vis.models.zoo", False) in found
    # command modules import gradio-heavy code only when their command runs (fast `offseg --help`)
    assert ("offseg_vis.app.commands", "offseg_vis.app.server", True) in found


def _violations(edges: list[Edge]) -> set[tuple[str, str]]:
    bad = set()
    for e in edges:
        src, dst = _package(e.importer), _package(e.target)
        if src == dst:
            continue
        if src in ALLOWED and dst not in ALLOWED[src]:
            bad.add((e.importer, dst))
        if dst in FORBIDDEN.get(src, ()):
            bad.add((e.importer, dst))
    return bad


def test_layers_import_only_downwards(graph):
    """models imports only constants/errors/models; data imports no models/engine/analysis/app/bench;
    engine imports no analysis/app/bench/experiment; constants and errors import nothing of ours."""
    _, edges = graph
    bad = _violations(edges)
    unexpected = sorted(bad - set(KNOWN_EXCEPTIONS))
    details = sorted(
        {f"{e.importer}:{e.line} imports {e.target}" for e in edges if (e.importer, _package(e.target)) in unexpected}
    )
    assert not unexpected, "upward imports:\n" + "\n".join(details)
    fixed = sorted(set(KNOWN_EXCEPTIONS) - bad)
    assert not fixed, f"these known exceptions are gone; delete them from KNOWN_EXCEPTIONS: {fixed}"


def _cycles(nodes: set[str], arcs: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(arcs.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(arcs.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    arcs = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles({"a", "b", "c", "d"}, arcs) == [["a", "b", "c"]]
    assert _cycles({"a", "b"}, {"a": {"b"}}) == []


def test_no_cycles_among_packages(graph):
    """The package graph (every import, known exceptions left out) has no cycle."""
    _, edges = graph
    arcs: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        src, dst = _package(e.importer), _package(e.target)
        if src != dst and (e.importer, dst) not in KNOWN_EXCEPTIONS:
            arcs[src].add(dst)
    nodes = set(arcs) | {d for ds in arcs.values() for d in ds}
    assert _cycles(nodes, arcs) == []


def test_no_cycles_among_model_modules(graph):
    """Inside offseg_vis.models no two modules import each other, directly or around a loop
    (the zoo <-> convert cycle that function-level imports used to hide)."""
    _, edges = graph
    arcs: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if _package(e.importer) == "models" and _package(e.target) == "models" and e.importer != e.target:
            arcs[e.importer].add(e.target)
    nodes = set(arcs) | {d for ds in arcs.values() for d in ds}
    assert _cycles(nodes, arcs) == []


def test_models_function_level_imports(graph):
    """Imports inside functions under offseg_vis/models are only the listed ones."""
    _, edges = graph
    inside = {(e.importer, e.target) for e in edges if e.in_function and _package(e.importer) == "models"}
    assert inside == MODELS_FUNCTION_LEVEL_IMPORTS
