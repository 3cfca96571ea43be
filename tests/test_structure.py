"""The package's shape, measured so it cannot regress: no branching on a backend's name outside
covidedge/backends (the backend table decides), no module over 500 lines, no public function
outside the CLI with more than 10 parameters (options travel as objects) and none that
overwrites by default."""

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
MAX_MODULE_LINES = 500
MAX_PUBLIC_PARAMETERS = 10
#: Modules allowed over MAX_MODULE_LINES, with the length each may not grow past: none.
LONG_MODULES_PENDING: dict = {}
#: Public functions whose ``overwrite`` may default to True: the atomic writers under every writer
#: (each writer above them states its own rule, and the tests below hold it to False).
OVERWRITING_HELPERS = {"fileio.py: atomic_target", "fileio.py: write_atomic"}


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


def public_functions(tree):
    """(name, parameter count) of module-level functions and of methods of public classes whose
    names do not start with an underscore (``__init__`` included; ``self`` / ``cls`` not counted)."""
    out = []

    def count(fn, method):
        a = fn.args
        n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
        return n - 1 if method and (a.posonlyargs or a.args) else n

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            out.append((node.name, count(node, False)))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and (not item.name.startswith("_") or item.name == "__init__")):
                    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in item.decorator_list)
                    out.append((f"{node.name}.{item.name}", count(item, not static)))
    return out


def test_no_module_is_over_500_lines():
    long = {rel: n for rel, path in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    grown = {rel: n for rel, n in long.items() if n > LONG_MODULES_PENDING.get(rel, MAX_MODULE_LINES)}
    assert grown == {}


def test_no_public_function_outside_the_cli_takes_more_than_10_parameters():
    wide = []
    for rel, path in _modules():
        if rel.startswith("cli/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        wide += [f"{rel}: {name} ({n})" for name, n in public_functions(tree) if n > MAX_PUBLIC_PARAMETERS]
    assert wide == []


def overwriting_by_default(tree):
    """Names of public functions and methods of public classes whose ``overwrite`` parameter
    defaults to True."""
    out = []

    def check(fn, name):
        a = fn.args
        positional = a.posonlyargs + a.args
        pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
        pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
        if any(arg.arg == "overwrite" and isinstance(d, ast.Constant) and d.value is True for arg, d in pairs):
            out.append(name)

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            check(node, node.name)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    check(item, f"{node.name}.{item.name}")
    return out


def test_no_public_function_overwrites_unless_asked():
    """No input, model or earlier result is overwritten unless asked (export_model, build_engine,
    make_calibration_set and EvaluationReport.save defaulted to overwrite=True)."""
    found = []
    for rel, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{rel}: {name}" for name in overwriting_by_default(tree)]
    assert sorted(set(found) - OVERWRITING_HELPERS) == []


def test_the_counters_see_what_they_count():
    tree = ast.parse("def f(a, b, *c, d=1, **e):\n    return a == 'openvino' or b in ('tensorrt', 'x')\n"
                     "class K:\n    def m(self, a):\n        pass\n")
    assert len(backend_comparisons(tree)) == 2
    assert public_functions(tree) == [("f", 5), ("K.m", 1)]
    tree = ast.parse("def f(a, overwrite=True):\n    pass\ndef g(*, overwrite: bool = True):\n    pass\n"
                     "def h(overwrite=False):\n    pass\nclass K:\n    def save(self, *, overwrite=True):\n        pass\n")
    assert overwriting_by_default(tree) == ["f", "g", "K.save"]
