"""The import graph of src/clap_vla (issue 26): no import cycles, and stages are a leaf that only
the CLI imports. Every import counts, module-level, inside functions and under TYPE_CHECKING, read
from the source with `ast` (nothing is imported, so this stays fast and light)."""

from __future__ import annotations

import ast
from pathlib import Path

import clap_vla

SRC = Path(clap_vla.__file__).parent
STAGES = "clap_vla.stages."


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The deepest module of `name` that is a file under src/clap_vla (a name inside a module resolves
    to that module); None for anything outside the package."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the clap_vla modules it imports anywhere in its source."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = _resolve(t, modules)
                if r is not None and r != mod:
                    edges.add(r)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reads_function_level_and_relative_imports():
    g = import_graph()
    assert len(g) > 50
    # the library imports torch-heavy modules inside functions (so `clap --help` stays light):
    # those edges count
    assert "clap_vla.models.act_vae" in g["clap_vla.train.act_vae"]
    assert "clap_vla.train.act_vae" in g["clap_vla.stages.train_act_vae"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in src/clap_vla:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_stage_imports_another_stage():
    bad = sorted(
        f"{m} imports {t}"
        for m, ts in import_graph().items()
        if m.startswith(STAGES)
        for t in ts
        if t.startswith(STAGES)
    )
    assert not bad, "stages are a leaf: a stage imports the library, never another stage:\n" + "\n".join(bad)


def test_nothing_but_the_cli_imports_a_stage():
    bad = sorted(
        f"{m} imports {t}"
        for m, ts in import_graph().items()
        if not m.startswith(STAGES) and m not in ("clap_vla.cli", "clap_vla.stages")
        for t in ts
        if t.startswith(STAGES)
    )
    assert not bad, "only the CLI imports stages:\n" + "\n".join(bad)
