"""The layout: packages import each other through public names, without loops, in small modules."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

import hutch.runtime
import hutch.runtime.container
import hutch.runtime.images

SRC = Path(__file__).resolve().parent.parent / "src"
NOT_YET: tuple[str, ...] = ()
GENERATED = ("hutch.sdk._sync",)
MAX_LINES = 650  # "about 600": a module past this holds more than one thing


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "hutch").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules `name` imports (anywhere in it, type-checking imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            # A package's own __init__ is not an edge from inside it.
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


@pytest.mark.parametrize(
    "package", [hutch.runtime.container, hutch.runtime.images], ids=lambda m: m.__name__
)
def test_runtime_subpackages_export_sorted_names_that_resolve(package: types.ModuleType) -> None:
    names = package.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert getattr(package, name) is getattr(hutch.runtime, name), name


def test_runtime_facade_is_both_subpackages() -> None:
    own = {"HOST_ID_BASE", "ID_RANGE", "shift_ownership"}
    parts = set(hutch.runtime.container.__all__) | set(hutch.runtime.images.__all__)
    assert set(hutch.runtime.__all__) == parts | own


def test_no_private_module_is_imported_from_another_package() -> None:
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        top = name.split(".")[:2]
        for target in _imports(name, path, modules):
            parts = target.split(".")
            private = any(p.startswith("_") and p != "_wire" for p in parts[2:])
            if parts[:2] != top and private:
                offenders.append(f"{name} -> {target}")
    assert offenders == []


def test_no_import_loops() -> None:
    modules = _modules()
    graph = {
        name: _imports(name, path, modules)
        for name, path in modules.items()
        if not name.startswith(NOT_YET)
    }
    # Tarjan's strongly connected components: any with two modules or more is a loop.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert loops == []


def test_no_hand_written_module_is_too_long() -> None:
    long = {
        name: lines
        for name, path in _modules().items()
        if not name.startswith(NOT_YET + GENERATED)
        and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
