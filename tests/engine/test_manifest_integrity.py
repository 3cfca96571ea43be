"""A manifest cannot silently change what an engine means: it is tamper-evident, and its spec must
equal the spec inside the engine's graph (exit code 4 at load otherwise)."""

from __future__ import annotations

import json

import pytest

from covidedge.engine.build import build_engine
from covidedge.formats.manifest import INTEGRITY_KEY, integrity_hash, manifest_path_for
from covidedge.errors import IncompatibleModelError
from covidedge.runtime import load
from tests.graphs import tiny_models


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("e")
    cls, _ = tiny_models(d)
    return build_engine(cls, d / "cls.ort.onnx", backend="onnxruntime", progress=False).engine_path


def _edit(engine, change, rehash: bool):
    mpath = manifest_path_for(engine)
    original = mpath.read_text()
    d = json.loads(original)
    change(d)
    if rehash:
        d[INTEGRITY_KEY] = integrity_hash(d)
    mpath.write_text(json.dumps(d))
    return original


@pytest.mark.parametrize("change, rehash, message", [
    (lambda d: d["spec"].update(labels=list(reversed(d["spec"]["labels"]))), False, "edited after the build"),
    (lambda d: d["spec"].update(input_size=[100000, 100000]), False, "edited after the build"),
    (lambda d: d.pop(INTEGRITY_KEY), False, "has no manifest_sha256"),
    (lambda d: d["spec"].update(labels=list(reversed(d["spec"]["labels"]))), True,
     r"spec differs from the spec inside the engine \(labels\)"),
    (lambda d: d.update(spec=["not", "a", "mapping"]), False, "manifest spec is a list, expected a JSON object"),
])
def test_edited_manifest_is_refused_at_load(engine, change, rehash, message):
    original = _edit(engine, change, rehash)
    try:
        with pytest.raises(IncompatibleModelError, match=message) as exc:
            load(engine).activate()
        assert exc.value.exit_code == 4 and "\n" not in str(exc.value)
    finally:
        manifest_path_for(engine).write_text(original)
    with load(engine) as runner:  # the untouched manifest loads
        assert runner.spec.labels == ("COVID-19", "Non-COVID", "Normal")
