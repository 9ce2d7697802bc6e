"""The house's shape, read from the code with `ast` (nothing is imported, so no JAX):

- every import, module-level or inside a function, runs down the layers
  runtime < masks < models < structured < data < training < study < report < export, api
  < cli < __main__, or stays within its own package;
- no two modules import each other, directly or round a circle;
- internal code imports modules where they live, not by their old flat names
  (`jaxprune.MOVED` serves those to users);
- no module is over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jaxprune

PACKAGE = Path(jaxprune.__file__).parent
LAYERS = ("runtime", "masks", "models", "structured", "data", "training", "study", "report", ("export", "api"), "cli", "__main__")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The jaxprune modules `name` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import sub` imports the submodule; `from mod import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "jaxprune" and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    """A module's layer (None for the package root, which only hands names on)."""
    parts = name.split(".")
    if len(parts) == 1:
        return None
    return next(i for i, names in enumerate(LAYERS) if parts[1] in (names if isinstance(names, tuple) else (names,)))


def test_the_graph_is_read():
    assert len(MODULES) > 30 and sum(map(len, GRAPH.values())) > 80
    assert "jaxprune.training.checkpoint" in GRAPH["jaxprune.training.loop"]
    # A lazy import inside a function counts as much as one at the top.
    assert "jaxprune.training.devices" in GRAPH["jaxprune.training.config"]


def test_old_flat_names_are_not_imported_inside_the_package():
    old = {f"jaxprune.{n}" for n in jaxprune.MOVED}
    wrong = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts if t in old)
    assert not wrong, wrong


def test_every_import_runs_down_the_layers_or_stays_in_its_package():
    wrong = []
    for m, targets in GRAPH.items():
        for t in targets:
            if t == "jaxprune" or layer(m) is None:
                continue  # the root: `jaxprune.__version__`; the root's own lazy names
            if t not in MODULES:
                wrong.append(f"{m} imports {t}, which is no module")
            elif layer(t) > layer(m) or (layer(t) == layer(m) and t.split(".")[1] != m.split(".")[1]):
                wrong.append(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})")
    assert not wrong, "\n".join(wrong)


def test_no_circle_of_imports():
    # Tarjan's strongly connected components over module -> module imports.
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                circles.append(sorted(scc))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert circles == [], circles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_400_lines(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name]}: {n} lines"


def test_a_circle_and_an_upward_import_are_seen(monkeypatch):
    # The checks can fail: a made-up graph with both.
    graph = {"jaxprune.runtime.a": {"jaxprune.study.b"}, "jaxprune.study.b": {"jaxprune.runtime.a"}}
    assert [f"{m}->{t}" for m, ts in graph.items() for t in ts if layer(t) > layer(m)] == [
        "jaxprune.runtime.a->jaxprune.study.b"]
    monkeypatch.setattr(__import__(__name__), "GRAPH", graph)
    monkeypatch.setattr(__import__(__name__), "MODULES", {**MODULES, **{k: None for k in graph}})
    with pytest.raises(AssertionError):
        test_no_circle_of_imports()
