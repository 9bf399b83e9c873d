"""Structure: a one-way import graph (no cycles, lazy imports inside functions included), the
model interface free of anything above it, and no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"lmconv_bench": ROOT / "lmconv_bench", "lmconv_bench.baselines": ROOT / "baselines"}
MAX_LINES = 80


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, d in PACKAGES.items():
        for f in d.rglob("*.py"):
            rel = f.relative_to(d).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> internal modules it imports anywhere in its file (top level or in functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from pkg import submodule` depends on the submodule; `from m import name` on m
                targets = subs + ([base] if any(t not in mods for t in subs) else [])
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod and t not in ("lmconv_bench", "lmconv_bench.baselines", "lmconv_bench.models",
                                               "lmconv_bench.metrics", "lmconv_bench.tasks"):
                    graph[mod].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles_even_lazy_ones():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


ALLOWED_BELOW_MODELS = {"lmconv_bench.errors", "lmconv_bench.orders", "lmconv_bench.pixels", "lmconv_bench.seeding"}


def test_models_depend_on_nothing_above_them():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("lmconv_bench.models") or mod.startswith("lmconv_bench.baselines"):
            above = {d for d in deps if not d.startswith(("lmconv_bench.models", "lmconv_bench.baselines"))} - ALLOWED_BELOW_MODELS
            assert not above, f"{mod} imports {sorted(above)} (models may use only {sorted(ALLOWED_BELOW_MODELS)})"
        if mod.startswith("lmconv_bench.models"):
            assert not any(d.startswith("lmconv_bench.baselines") for d in deps), f"{mod} imports a baseline"


def _functions():
    for mod, f in _modules().items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield mod, node


def _code_lines(node) -> int:
    """Lines of a function without its docstring (signature and body)."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


def test_no_function_over_80_code_lines():
    long = [f"{mod}.{n.name} ({_code_lines(n)} lines)" for mod, n in _functions() if _code_lines(n) > MAX_LINES]
    assert not long, "functions over 80 lines (docstrings not counted): " + ", ".join(long)


@pytest.mark.parametrize("pkg", list(PACKAGES))
def test_the_graph_covers_the_package(pkg):
    assert any(m.startswith(pkg) for m in import_graph())
