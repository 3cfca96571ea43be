"""Dependencies point one way: a module never imports from its own layer's other packages or
from a layer above it, not even inside a function. The layers are listed in docs/layout.md."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "covidedge"

#: Lowest first. A module belongs to the longest prefix that matches its name.
LAYERS = (
    ("covidedge", "covidedge.errors"),
    ("covidedge.spec", "covidedge.fileio", "covidedge.machine", "covidedge.progress"),
    ("covidedge.formats", "covidedge.data", "covidedge.metrics", "covidedge.overlay", "covidedge.plots"),
    ("covidedge.models", "covidedge.inputs", "covidedge.pretrained", "covidedge.prediction"),
    ("covidedge.backends",),
    ("covidedge.export",),
    ("covidedge.dicom",),
    ("covidedge.runtime",),
    ("covidedge.bench.timing",),  # the timing loop: bench reports and the engine autotuner use it
    ("covidedge.evaluation", "covidedge.engine"),
    ("covidedge.train", "covidedge.bench", "covidedge.serve", "covidedge.node"),
    ("covidedge.demo", "covidedge.pretrained.release"),  # both train, export and evaluate
    ("covidedge.cli",),
    ("covidedge.__main__",),
)


def _unit(module: str):
    """(layer index, prefix) of the longest prefix of ``module`` in LAYERS."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    assert best is not None, f"{module} is in no layer; add it to LAYERS and docs/layout.md"
    return best


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "covidedge":
                for alias in node.names:
                    yield node.lineno, ("covidedge." + alias.name if alias.name != "__version__"
                                        else "covidedge")
            elif node.module.startswith("covidedge."):
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "covidedge" or alias.name.startswith("covidedge."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Dict):  # lazy re-export tables: {"Name": "covidedge.module"}
            for value in node.values:
                if (isinstance(value, ast.Constant) and isinstance(value.value, str)
                        and value.value.startswith("covidedge.") and " " not in value.value):
                    yield value.lineno, value.value


def _violations():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        s_layer, s_prefix = _unit(source)
        if source == "covidedge":
            continue  # the package root is the facade: it re-exports the public API lazily
        for lineno, target in _imports(path):
            t_layer, t_prefix = _unit(target)
            if t_prefix == s_prefix:
                continue
            if t_layer > s_layer or (t_layer == s_layer and t_prefix != s_prefix):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{lineno}: {source} "
                             f"(layer {s_layer}) imports {target} (layer {t_layer})")
    return found


def test_no_module_imports_from_its_layer_or_above():
    assert _violations() == []


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        _unit(_module_name(path))


def test_the_check_sees_an_upward_import(tmp_path):
    # the rule itself: a backend importing the runtime would be reported
    assert _unit("covidedge.backends.onnxruntime")[0] < _unit("covidedge.runtime.pipeline")[0]
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from covidedge.runtime.pipeline import Pipeline\n")
    assert list(_imports(bad)) == [(2, "covidedge.runtime.pipeline")]


def _file_graph():
    """covidedge module -> the covidedge modules its import statements name (inside functions
    too; ``from covidedge.x import y`` names covidedge.x.y when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module == "covidedge" or node.module.startswith("covidedge.")):
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("covidedge")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_files():
    assert _cycles(_file_graph()) == []


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
