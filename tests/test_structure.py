"""The package's shape, measured so it cannot regress: no branching on a backend's name outside
covidedge/backends (the backend table decides)."""

from __future__ import annotations

import ast
from pathlib import Path

from covidedge.spec import RUNNER_BACKENDS

PACKAGE = Path(__file__).resolve().parents[1] / "covidedge"

#: Comparisons of a backend name with a literal allowed outside covidedge/backends/ (issue 21):
#: machine.py asks whether the tensorrt *module* is imported; the Triton python model reads the
#: runtime its config names.
MAX_BACKEND_COMPARISONS = 3
#: Modules, beyond backends/, spec.py and cli/, that may spell the string "openvino".
MAX_OPENVINO_MODULES = 2


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def _literals(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def backend_comparisons(tree):
    """Compare nodes with a backend name as a literal on either side (``x == "tensorrt"``,
    ``x in ("onnxruntime", "openvino")``)."""
    names = set(RUNNER_BACKENDS)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            values = _literals(node.left) + [v for c in node.comparators for v in _literals(c)]
            if names & set(values):
                found.append(node)
    return found


def test_backend_names_are_compared_only_in_the_backend_table():
    found = []
    for rel, path in _modules():
        if rel.startswith("backends/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{rel}:{n.lineno}: {ast.unparse(n)}" for n in backend_comparisons(tree)]
    assert len(found) <= MAX_BACKEND_COMPARISONS, "\n".join(found)


def test_openvino_is_spelled_in_few_modules():
    spelled = []
    for rel, path in _modules():
        if rel.startswith(("backends/", "cli/")) or rel == "spec.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Constant) and n.value == "openvino" for n in ast.walk(tree)):
            spelled.append(rel)
    assert len(spelled) <= MAX_OPENVINO_MODULES, spelled


def test_the_counters_see_what_they_count():
    tree = ast.parse("def f(a, b, *c, d=1, **e):\n    return a == 'openvino' or b in ('tensorrt', 'x')\n"
                     "class K:\n    def m(self, a):\n        pass\n")
    assert len(backend_comparisons(tree)) == 2
