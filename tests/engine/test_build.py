"""The engine builder's decisions (no TensorRT needed) and the ONNX Runtime build end to end."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from covidedge.backends.onnxruntime import SELF_CHECK_ATOL as ORT_SELF_CHECK_ATOL
from covidedge.backends.tensorrt import plan as P
from covidedge.backends.tensorrt.logger import format_trt_errors
from covidedge.engine import build as B
from covidedge.engine.paths import default_engine_path, refuse_foreign_file
from covidedge.backends import load_manifest
from covidedge.formats.manifest import EngineManifest, manifest_path_for
from covidedge.fileio import sha256_file
from covidedge.formats.onnxfile import graph_opset, graph_precision
from covidedge.errors import (EXIT_BAD_INPUT, EXIT_USAGE, EXIT_MISSING_DEPENDENCY, BadInputError, IncompatibleModelError,
                              MissingDependencyError)
from covidedge.machine import module_present
from tests.graphs import empty_model, run_onnx, tiny_checkpoint

HAS_TRT = module_present("tensorrt")
HAS_PYCUDA = module_present("pycuda")
no_trt = pytest.mark.skipif(HAS_TRT, reason="this machine has TensorRT; the fallback path is not taken")


# -- option validation ---------------------------------------------------------------------------
def test_batch_range_validation():
    assert B.validate_batch_range(1, 4, 8) == (1, 4, 8)
    assert B.validate_batch_range(2, 2, 2) == (2, 2, 2)
    with pytest.raises(BadInputError, match="--min-batch 4 --opt-batch 2 --max-batch 8 is not ordered"):
        B.validate_batch_range(4, 2, 8)
    with pytest.raises(BadInputError, match="min <= opt <= max"):
        B.validate_batch_range(1, 9, 8)
    with pytest.raises(BadInputError, match="--min-batch 0 must be a whole number >= 1"):
        B.validate_batch_range(0, 1, 8)
    with pytest.raises(BadInputError, match="--max-batch 'x' is not a whole number"):
        B.validate_batch_range(1, 1, "x")
    with pytest.raises(BadInputError, match="--opt-batch 1.5"):
        B.validate_batch_range(1, 1.5, 8)


def test_backend_resolution():
    assert B.resolve_backend("auto", tensorrt_present=False) == "onnxruntime"
    assert B.resolve_backend("auto", tensorrt_present=True, pycuda_present=True) == "tensorrt"
    assert B.resolve_backend("auto", tensorrt_present=True, pycuda_present=False) == "onnxruntime"
    assert B.resolve_backend("onnxruntime", tensorrt_present=True) == "onnxruntime"
    with pytest.raises(MissingDependencyError) as err:
        B.resolve_backend("tensorrt", tensorrt_present=False)
    assert err.value.exit_code == EXIT_MISSING_DEPENDENCY
    assert "JetPack" in str(err.value) and "pip install tensorrt" in str(err.value)
    with pytest.raises(BadInputError, match="backend 'cuda' is unknown"):
        B.resolve_backend("cuda", tensorrt_present=True)


def test_tensorrt_only_options_are_refused_for_onnxruntime():
    B.check_options_for_backend("tensorrt", dla_core=0, workspace_mib=64, version_compatible=True)
    with pytest.raises(BadInputError) as err:
        B.check_options_for_backend("onnxruntime", dla_core=0, fell_back=True)
    assert "--dla-core applies to TensorRT engines only" in str(err.value)
    assert "TensorRT is not installed here" in str(err.value)
    with pytest.raises(BadInputError, match="--workspace, --timing-cache, --version-compatible apply"):
        B.check_options_for_backend("onnxruntime", workspace_mib=1, timing_cache="c", version_compatible=True)
    with pytest.raises(BadInputError, match="--allow-tf32 applies to TensorRT engines only, but this build is "
                                            "for OpenVINO"):
        B.check_options_for_backend("openvino", allow_tf32=True)


def test_precision_contradiction_is_refused():
    assert B.resolve_precision(None, "fp16") == "fp16"
    assert B.resolve_precision("int8", "int8") == "int8"
    with pytest.raises(BadInputError) as err:
        B.resolve_precision("int8", "fp16", source="m.onnx")
    text = str(err.value)
    assert text.startswith("m.onnx: this ONNX graph is fp16 but --precision int8 was asked for")
    assert "drop --precision" in text and "\n" not in text


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_precision_is_read_from_the_graph(tiny_onnx, precision):
    path, _ = tiny_onnx(precision)
    assert graph_precision(path) == precision


def test_unreadable_onnx_is_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 definitely not protobuf" * 3)
    with pytest.raises(IncompatibleModelError, match="not a readable ONNX model"):
        graph_precision(bad)


def test_profile_shapes():
    assert B.profile_shapes([-1, 1, 16, 16], 1, 2, 8, expected_chw=(1, 16, 16)) == (
        (1, 1, 16, 16), (2, 1, 16, 16), (8, 1, 16, 16))
    assert B.profile_shapes([4, 1, 8, 8], 4, 4, 4)[2] == (4, 1, 8, 8)
    with pytest.raises(BadInputError, match="fixed batch of 1, batch range 1..8"):
        B.profile_shapes([1, 1, 16, 16], 1, 1, 8)
    with pytest.raises(IncompatibleModelError, match=r"graph input is \(1, 16, 16\).*spec says \(1, 32, 32\)"):
        B.profile_shapes([-1, 1, 16, 16], 1, 1, 8, expected_chw=(1, 32, 32))
    with pytest.raises(IncompatibleModelError, match="only the batch axis may be dynamic"):
        B.profile_shapes([-1, 1, -1, -1], 1, 1, 8)
    with pytest.raises(IncompatibleModelError, match="expected NCHW"):
        B.profile_shapes([-1, 256], 1, 1, 8)


# -- TensorRT plans per version (pure decisions; the builder applies them) -----------------------
PROFILE = ((1, 1, 16, 16), (2, 1, 16, 16), (8, 1, 16, 16))


@pytest.mark.parametrize("version, precision, network, flags, islands", [
    ("8.6.2.3", "fp32", ["EXPLICIT_BATCH"], [], False),
    ("8.6.2.3", "fp16", ["EXPLICIT_BATCH"], ["FP16", "OBEY_PRECISION_CONSTRAINTS"], True),
    ("8.5.2.2", "fp16", ["EXPLICIT_BATCH"], ["FP16", "OBEY_PRECISION_CONSTRAINTS"], True),
    ("8.5.2.2", "int8", ["EXPLICIT_BATCH"], ["INT8"], False),
    ("10.3.0.30", "fp16", ["STRONGLY_TYPED"], [], False),
    ("10.3.0.30", "int8", ["STRONGLY_TYPED"], [], False),
    ("11.1.0", "fp16", [], [], False),
    ("11.1.0", "int8", [], [], False),
])
def test_tensorrt_plan_per_version(version, precision, network, flags, islands):
    plan = P.plan_tensorrt_build(version, precision, "image", PROFILE)
    assert plan.network_flags == network
    assert plan.builder_flags == flags
    assert plan.fp32_islands is islands  # TensorRT 8.x fp16 only: strong typing keeps them elsewhere
    assert plan.cleared_flags == ["TF32"]  # "fp32" means fp32, in every release
    assert plan.strongly_typed == (int(version.split(".")[0]) >= 10)
    assert plan.profile == PROFILE and plan.input_name == "image"


def test_tf32_stays_on_only_when_asked_for():
    assert P.plan_tensorrt_build("10.3.0", "fp32", "image", PROFILE, allow_tf32=True).cleared_flags == []
    assert P.plan_tensorrt_build("8.6.1", "fp32", "image", PROFILE).cleared_flags == ["TF32"]


FIXED = ((4, 1, 16, 16),) * 3


def test_tensorrt_plan_options():
    plan = P.plan_tensorrt_build("10.3.0", "fp16", "image", FIXED, workspace_mib=256,
                                 timing_cache=Path("orin.cache"), dla_core=1, version_compatible=True)
    assert plan.workspace_bytes == 256 * 1024 * 1024
    assert plan.timing_cache == "orin.cache"
    assert plan.dla_core == 1 and plan.version_compatible
    assert plan.builder_flags == ["GPU_FALLBACK", "VERSION_COMPATIBLE"]
    assert plan.notes == ["DLA core 1 with GPU fallback: layers DLA cannot run go to the GPU; "
                          "TensorRT's build log names them"]
    assert P.plan_tensorrt_build("10.3.0", "int8", "image", PROFILE).notes == []
    with pytest.raises(BadInputError, match="DLA runs fp16 and int8 only"):
        P.plan_tensorrt_build("10.3.0", "fp32", "image", FIXED, dla_core=0)
    with pytest.raises(BadInputError, match="--version-compatible needs TensorRT 8.6 or later; this is 8.5.2"):
        P.plan_tensorrt_build("8.5.2", "fp16", "image", PROFILE, version_compatible=True)
    with pytest.raises(BadInputError, match="--workspace 0"):
        P.plan_tensorrt_build("10.3.0", "fp16", "image", PROFILE, workspace_mib=0)
    with pytest.raises(MissingDependencyError, match="TensorRT 8.2.1 is too old"):
        P.plan_tensorrt_build("8.2.1", "fp16", "image", PROFILE)
    with pytest.raises(BadInputError, match="--dla-core -1 must be a core number"):
        P.plan_tensorrt_build("10.3.0", "fp16", "image", FIXED, dla_core=-1)


@pytest.mark.parametrize("profile", [PROFILE, ((1, 1, 16, 16), (4, 1, 16, 16), (4, 1, 16, 16)),
                                     ((4, 1, 16, 16), (4, 1, 16, 16), (8, 1, 16, 16))])
def test_dla_refuses_a_dynamic_batch_instead_of_building_a_gpu_engine(profile):
    with pytest.raises(BadInputError) as err:
        P.plan_tensorrt_build("8.5.2.2", "int8", "image", profile, dla_core=0)
    lo, opt, hi = (s[0] for s in profile)
    assert f"DLA takes no dynamic shapes, but batch {lo}..{hi} (opt {opt}) was asked for" in str(err.value)
    assert f"--min-batch {hi} --opt-batch {hi} --max-batch {hi}" in err.value.hint


def test_dla_with_a_fixed_batch_on_every_jetpack_release():
    for version in ("8.5.2.2", "10.3.0.30", "11.1.0"):
        for precision in ("fp16", "int8"):
            plan = P.plan_tensorrt_build(version, precision, "image", FIXED, dla_core=0)
            assert plan.dla_core == 0 and "GPU_FALLBACK" in plan.builder_flags


def test_tensorrt8_refuses_opsets_its_parser_does_not_document():
    P.check_tensorrt_opset("8.6.1", 17)
    P.check_tensorrt_opset("10.3.0", 20)
    P.check_tensorrt_opset("11.1.0", 20)
    P.check_tensorrt_opset("8.5.2", None)  # no declared opset: the parser's own error applies
    with pytest.raises(IncompatibleModelError) as err:
        P.check_tensorrt_opset("8.5.2.2", 18, source="m.onnx")
    assert "ONNX opset 18; the TensorRT 8.5.2.2 ONNX parser documents opsets up to 17" in str(err.value)
    assert err.value.exit_code == 4 and "--opset 17" in err.value.hint
    # what export writes by default (the CLI's and export_model's opset) builds on TensorRT 8.x
    import inspect

    from covidedge.export import export_model
    from covidedge.export.onnx import DEFAULT_OPSET

    assert inspect.signature(export_model).parameters["opset"].default == DEFAULT_OPSET
    P.check_tensorrt_opset("8.5.2.2", DEFAULT_OPSET)


def test_graph_opset_reads_the_default_domain():
    assert graph_opset(empty_model(("com.microsoft", 1), ("", 19))) == 19
    assert graph_opset(empty_model(("x", 1))) is None


def test_fp32_islands_are_the_layers_the_parser_typed_float():
    layers = [("cast_in", ["HALF"]), ("conv", ["DataType.HALF"]), ("shape", ["INT32"]),
              ("cast_out", ["FLOAT"]), ("gap", ["FLOAT"]), ("softmax", ["DataType.FLOAT"]),
              ("topk", ["FLOAT", "INT32"]), ("empty", [])]
    assert P.fp32_island_layers(layers) == [3, 4, 5]


def test_tensorrt_errors_become_one_line():
    records = [("warning", "weights truncated"), ("error", "  Conv_3: kernel\nweights missing "),
               ("info", "ignored")]
    text = format_trt_errors("parse", ["In node 3 (Conv): INVALID_NODE"], records, source="m.onnx")
    assert text == ("TensorRT could not parse m.onnx: In node 3 (Conv): INVALID_NODE | "
                    "Conv_3: kernel weights missing")
    many = format_trt_errors("build an engine from", [], [("error", f"e{i}") for i in range(5)])
    assert many.endswith("e0 | e1 | e2 (+2 more)")
    only_warn = format_trt_errors("deserialize", [], [("warning", "old plan version")])
    assert only_warn.endswith(": old plan version")
    assert format_trt_errors("run", [], []).endswith("TensorRT logged no error")


def test_default_engine_paths():
    assert default_engine_path("runs/cls/best.pt", "fp16", "tensorrt", tensorrt_version="10.3.0.30",
                                 compute_capability="8.7") == Path("build/cls-best.fp16.trt10.3.sm87.engine")
    # two runs' best.pt get two engines, not one that the second build overwrites
    assert default_engine_path("runs/seg/best.pt", "fp32", "onnxruntime") == Path("build/seg-best.fp32.ort.onnx")
    assert default_engine_path("exports/cls.int8.onnx", "int8", "onnxruntime") == Path("build/cls.int8.ort.onnx")
    assert default_engine_path("cls-fp16.onnx", "fp16", "tensorrt") == Path("build/cls.fp16.trt.engine")


def test_build_engine_keeps_an_existing_engine_unless_asked(tiny_onnx, tmp_path):
    """build_engine defaulted to overwrite=True: an earlier engine was replaced without a word."""
    from covidedge.fileio import OutputExistsError

    src, _ = tiny_onnx("fp32")
    out = tmp_path / "tiny.fp32.ort.onnx"
    first = B.build_engine(src, out, backend="onnxruntime", progress=False)
    before = (out.read_bytes(), first.manifest_path.read_bytes())
    with pytest.raises(OutputExistsError, match="engine output already exists"):
        B.build_engine(src, out, backend="onnxruntime", max_batch=4, progress=False)
    assert (out.read_bytes(), first.manifest_path.read_bytes()) == before
    again = B.build_engine(src, out, backend="onnxruntime", max_batch=4, progress=False, overwrite=True)
    assert again.manifest.max_batch == 4


# -- the ONNX Runtime build, end to end ----------------------------------------------------------
@pytest.mark.parametrize("precision, task", [("fp32", "classifier"), ("fp16", "segmenter"),
                                             ("int8", "classifier")])
def test_onnxruntime_build_matches_its_source_graph(tiny_onnx, tmp_path, precision, task):
    src, spec = tiny_onnx(precision, task)
    out = tmp_path / "out" / f"tiny.{precision}.engine"
    res = B.build_engine(src, out, backend="onnxruntime", min_batch=1, opt_batch=2, max_batch=4, progress=False)
    assert res.engine_path == out and res.backend == "onnxruntime"
    assert res.manifest_path == manifest_path_for(out) and res.manifest_path.is_file()
    m = EngineManifest.read(res.manifest_path)
    assert m == res.manifest
    assert (m.backend, m.precision, m.task) == ("onnxruntime", precision, task)
    assert (m.min_batch, m.opt_batch, m.max_batch) == (1, 2, 4)
    assert m.engine_sha256 == sha256_file(out) and m.engine_bytes == out.stat().st_size
    assert m.onnx_sha256 == sha256_file(src) and m.calibration_sha256 is None
    assert m.model_spec == spec and m.labels == list(spec.labels)
    assert [i["name"] for i in m.inputs] == ["image"] and m.inputs[0]["shape"] == [-1, 1, 16, 16]
    assert [o["name"] for o in m.outputs] == ["logits", "probabilities"]
    import onnxruntime

    assert m.backend_version == onnxruntime.__version__
    assert datetime.fromisoformat(m.built_at).utcoffset().total_seconds() == 0
    assert m.build_seconds > 0 and m.device["cpu"] and m.build_options["ort_offline_level"] == "extended"
    assert m.build_options["verification"]["max_abs_diff"]["probabilities"] <= ORT_SELF_CHECK_ATOL[precision]

    x = np.random.default_rng(1).random((3, 1, 16, 16), dtype=np.float32)
    ref, got = run_onnx(src, x), run_onnx(out, x)
    for name in ("logits", "probabilities"):
        assert got[name].shape == ref[name].shape
        np.testing.assert_allclose(got[name], ref[name], atol=1e-5, rtol=1e-5)
    assert load_manifest(out) == m  # verifies and passes on the machine that built it


@no_trt
def test_auto_falls_back_with_one_line_on_stderr(tiny_onnx, tmp_path, capsys, monkeypatch):
    src, _ = tiny_onnx("fp16")
    monkeypatch.chdir(tmp_path)
    res = B.build_engine(src, progress=True)  # the API is quiet unless asked; the CLI asks
    assert res.engine_path == Path("build/tiny-classifier.fp16.ort.onnx") and res.engine_path.is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("note: TensorRT is not installed here; built an ONNX Runtime")
    assert str(res.engine_path) in err[0]


@no_trt
def test_progress_false_prints_nothing(tiny_onnx, tmp_path, capsys):
    src, _ = tiny_onnx("fp16")
    res = B.build_engine(src, tmp_path / "quiet.ort.onnx", progress=False)  # auto: falls back
    assert res.backend == "onnxruntime" and res.engine_path.is_file()
    assert capsys.readouterr() == ("", "")
    assert res.note.startswith("ONNX Runtime ") and " fp16 model (CPU), batch 1..8, built in " in res.note


@no_trt
def test_explicit_tensorrt_without_tensorrt_is_an_error(tiny_onnx, tmp_path):
    src, _ = tiny_onnx()
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        B.build_engine(src, tmp_path / "x.engine", backend="tensorrt", progress=False)
    assert not (tmp_path / "x.engine").exists()


def test_build_refusals(tiny_onnx, tmp_path):
    src, _ = tiny_onnx("fp16")
    with pytest.raises(BadInputError, match="graph is fp16 but --precision int8"):
        B.build_engine(src, tmp_path / "a.engine", precision="int8", backend="onnxruntime", progress=False)
    with pytest.raises(BadInputError, match="calibration options apply when building int8 from a checkpoint"):
        B.build_engine(src, tmp_path / "a.engine", calibration=tmp_path, backend="onnxruntime", progress=False)
    with pytest.raises(BadInputError, match="--dla-core applies to TensorRT engines only"):
        B.build_engine(src, tmp_path / "a.engine", dla_core=0, backend="onnxruntime", progress=False)
    with pytest.raises(BadInputError, match="not ordered"):
        B.build_engine(src, tmp_path / "a.engine", min_batch=4, opt_batch=1, backend="onnxruntime", progress=False)
    with pytest.raises(BadInputError, match="model file not found"):
        B.build_engine(tmp_path / "none.onnx", tmp_path / "a.engine", progress=False)
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    with pytest.raises(BadInputError, match="cannot build from a .txt file"):
        B.build_engine(txt, tmp_path / "a.engine", progress=False)
    fixed, _ = tiny_onnx("fp32", batch=1, name="fixed.onnx")
    with pytest.raises(BadInputError, match="fixed batch of 1"):
        B.build_engine(fixed, tmp_path / "a.engine", backend="onnxruntime", progress=False)
    assert not (tmp_path / "a.engine").exists()


# -- the command ---------------------------------------------------------------------------------
def test_cli_builds_and_prints_json(tiny_onnx, tmp_path):
    from covidedge.cli.build_engine import command

    src, _ = tiny_onnx("int8")
    out = tmp_path / "cli.engine"
    res = CliRunner().invoke(command, [str(src), "--out", str(out), "--backend", "onnxruntime",
                                       "--max-batch", "4", "--opt-batch", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["engine"] == str(out) and data["backend"] == "onnxruntime"
    assert data["details"]["precision"] == "int8" and data["details"]["max_batch"] == 4
    assert out.is_file() and manifest_path_for(out).is_file()

    table = CliRunner().invoke(command, [str(src), "--out", str(tmp_path / "t.engine"), "--backend", "onnxruntime"])
    assert table.exit_code == 0, table.output
    assert "precision   int8" in table.stdout and "batch       1..8 (opt 1)" in table.stdout


def test_cli_refuses_options_that_do_not_apply(tiny_onnx, tmp_path):
    from covidedge.cli.main import main

    src, _ = tiny_onnx("fp32")
    with pytest.raises(SystemExit) as exit_:
        main(["build-engine", str(src), "--out", str(tmp_path / "x.engine"), "--backend", "onnxruntime",
              "--dla-core", "0"])
    assert exit_.value.code == EXIT_USAGE  # an option that cannot apply: a usage error
    with pytest.raises(SystemExit) as exit_:
        main(["build-engine", str(src), "--out", str(tmp_path / "x.engine"), "--precision", "fp16",
              "--backend", "onnxruntime"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert not (tmp_path / "x.engine").exists()


def test_cli_allow_tf32_is_a_tensorrt_option(tiny_onnx, tmp_path, capsys):
    from covidedge.cli.main import main

    src, _ = tiny_onnx("fp32")
    with pytest.raises(SystemExit) as exit_:
        main(["build-engine", str(src), "--out", str(tmp_path / "x.engine"), "--backend", "onnxruntime",
              "--allow-tf32"])
    assert exit_.value.code == EXIT_USAGE
    assert "--allow-tf32 applies to TensorRT engines only" in capsys.readouterr().err


def test_cli_help_teaches():
    from covidedge.cli.build_engine import command

    res = CliRunner().invoke(command, ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and "--calib-method [minmax|entropy|percentile]" in res.output


def test_build_from_a_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="exporting a checkpoint needs torch (the train extra)")
    import covidedge.export.onnx as export_onnx
    import covidedge.models.loading as loading
    from covidedge.models.registry import create_model
    from covidedge.spec import classifier_spec
    from covidedge.formats.checkpoint import save_checkpoint

    spec = classifier_spec(input_size=(32, 32), model_kwargs={"width_mult": 0.125})
    model = create_model("xception", num_classes=3, in_chans=1, width_mult=0.125).eval()
    ckpt = tmp_path / "cls.pt"
    save_checkpoint(ckpt, model, spec)
    calls = {"load_checkpoint": 0, "torch_outputs": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(loading, "load_checkpoint", counted("load_checkpoint", loading.load_checkpoint))
    monkeypatch.setattr(export_onnx, "torch_outputs", counted("torch_outputs", export_onnx.torch_outputs))
    res = B.build_engine(ckpt, tmp_path / "b" / "cls.engine", precision="fp16", backend="onnxruntime",
                         max_batch=2, progress=False)
    # the checkpoint is read once, and its parity reference (the torch model's outputs) computed once
    assert calls == {"load_checkpoint": 1, "torch_outputs": 1}
    m = res.manifest
    assert m.precision == "fp16" and m.build_options["from_checkpoint"]
    onnx_path = Path(m.build_options["onnx"])
    assert onnx_path == (tmp_path / "b" / "cls.engine.src.onnx").resolve() and onnx_path.is_file()
    assert graph_precision(onnx_path) == "fp16"
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(res.engine_path, x)["probabilities"],
                               run_onnx(onnx_path, x)["probabilities"], atol=1e-5)


def test_cli_builds_int8_from_a_checkpoint_with_calibration(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="exporting a checkpoint needs torch (the train extra)")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    from covidedge.cli.build_engine import command
    from covidedge.data.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", per_class=2, splits=("Train",), size=32)
    tiny_checkpoint(tmp_path / "cls.pt", "classifier", 32)
    out = tmp_path / "b" / "cls.int8.engine"
    res = CliRunner().invoke(command, [str(tmp_path / "cls.pt"), "--out", str(out), "--precision", "int8",
                                       "--calib-data", str(data), "--calib-count", "3", "--calib-method", "minmax",
                                       "--max-batch", "2", "--backend", "onnxruntime", "--json"])
    assert res.exit_code == 0, res.output
    m = EngineManifest.read(manifest_path_for(out))
    assert m.precision == "int8" and graph_precision(m.build_options["onnx"]) == "int8"
    assert m.calibration_sha256 and len(m.calibration_sha256) == 64
    assert m.build_options["calib_count"] == 3 and m.build_options["calib_method"] == "minmax"
    cmd = json.loads(res.stdout)["details"]["build_options"]
    assert cmd["calib_data"] == str(data.resolve())
    assert not (tmp_path / "calibration").exists()  # the calibration manifest sits beside the engine
    assert json.loads((tmp_path / "b" / "cls.int8.engine.calibration.json").read_text())["count"] == 3
    # an ONNX Runtime CPU engine gets the measured-faster unsigned activations by default
    from covidedge.export.int8 import inspect_qdq

    assert m.build_options["int8_activations"] == "uint8"
    assert inspect_qdq(m.build_options["onnx"])["dtypes"].get("uint8", 0) > 0


def test_int8_activation_choice_per_backend():
    assert B.resolve_int8_activations("auto", "tensorrt") == "int8"
    assert B.resolve_int8_activations("auto", "onnxruntime") == B.CPU_INT8_ACTIVATIONS == "uint8"
    assert B.resolve_int8_activations("int8", "onnxruntime") == "int8"
    with pytest.raises(BadInputError, match="TensorRT takes signed symmetric int8 activations only"):
        B.resolve_int8_activations("uint8", "tensorrt")
    with pytest.raises(BadInputError, match="int8 activations 'fp8' unknown"):
        B.resolve_int8_activations("fp8", "onnxruntime")


def test_int8_activations_option_needs_an_int8_checkpoint_build(tmp_path, tiny_onnx):
    src, _ = tiny_onnx("fp32")
    with pytest.raises(BadInputError, match="applies to int8 builds, this build is fp32"):
        B.build_engine(src, tmp_path / "a.onnx", int8_activations="uint8", backend="onnxruntime",
                       progress=False)


def test_two_checkpoints_named_best_get_their_own_engines_and_graphs(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="exporting a checkpoint needs torch (the train extra)")
    monkeypatch.chdir(tmp_path)

    (tmp_path / "runs" / "cls").mkdir(parents=True)
    (tmp_path / "runs" / "seg").mkdir(parents=True)
    tiny_checkpoint(tmp_path / "runs" / "cls" / "best.pt", "classifier", 32)
    tiny_checkpoint(tmp_path / "runs" / "seg" / "best.pt", "segmenter", 32, base_width=4)
    a = B.build_engine("runs/cls/best.pt", backend="onnxruntime", progress=False)
    b = B.build_engine("runs/seg/best.pt", backend="onnxruntime", progress=False)
    assert a.engine_path != b.engine_path
    assert a.manifest.build_options["onnx"] != b.manifest.build_options["onnx"]
    assert EngineManifest.read(a.manifest_path).task == "classifier"  # still its own graph
    assert graph_precision(a.manifest.build_options["onnx"]) == "fp32"
    # a build whose intermediate would be another engine's source graph is refused
    victim = Path(a.manifest.build_options["onnx"])
    before = victim.read_bytes()
    with pytest.raises(BadInputError, match="which the engine .* was built from"):
        refuse_foreign_file(victim, tmp_path / "build" / "other.engine")
    assert victim.read_bytes() == before


def test_tensorrt_orchestration_with_a_stand_in_builder(tiny_onnx, tmp_path, monkeypatch, capsys):
    """The TensorRT branch of build_engine on any machine: the plan for the version found, the
    builder's bytes written, the self-check's numbers in the manifest, notes said only with
    progress. TensorRT's own calls are checked by test_tensorrt_api_surface.py and run by
    test_tensorrt.py; here they are replaced."""
    import covidedge.backends.tensorrt.build as trt_build

    seen = {}

    def build_serialized(onnx_path, plan):
        seen["plan"] = plan
        return b"plan bytes", [{"name": "image", "shape": [-1, 1, 16, 16], "dtype": "float32"}], [], ["built"]

    def self_check_plan(engine, manifest, onnx_path, opt_batch):
        seen["checked"] = (engine.read_bytes(), manifest.backend, opt_batch)
        return {"batch": opt_batch, "max_abs_diff": {"probabilities": 0.0}}

    monkeypatch.setattr(B, "module_present", lambda name: True)
    monkeypatch.setattr(B, "package_version", lambda name: "10.3.0.30" if name == "tensorrt" else None)
    monkeypatch.setattr(trt_build, "build_serialized", build_serialized)
    monkeypatch.setattr(trt_build, "self_check_plan", self_check_plan)
    src, _ = tiny_onnx("fp16")
    quiet = B.build_engine(src, tmp_path / "a.engine", min_batch=1, opt_batch=2, max_batch=4, progress=False)
    assert capsys.readouterr() == ("", "")
    assert quiet.backend == "tensorrt" and quiet.manifest.backend_version == "10.3.0.30"
    assert seen["plan"].network_flags == ["STRONGLY_TYPED"] and seen["plan"].profile[2] == (4, 1, 16, 16)
    assert seen["checked"] == (b"plan bytes", "tensorrt", 2)
    m = EngineManifest.read(quiet.manifest_path)
    assert m.build_options["verification"]["batch"] == 2 and m.build_options["notes"] == ["built"]
    assert m.engine_sha256 == sha256_file(tmp_path / "a.engine") and m.build_options["allow_tf32"] is False
    assert quiet.note.startswith("TensorRT 10.3.0.30 fp16 engine for ")
    B.build_engine(src, tmp_path / "b.engine", progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("building a TensorRT 10.3.0.30 fp16 engine for ") and err[-1] == "note: built"
