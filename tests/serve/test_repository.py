"""Triton repositories: configs per target, every config.pbtxt parsed by Triton's ModelConfig
schema, the files beside them, and refusals."""

from __future__ import annotations

import json

import pytest

from covidedge.formats.manifest import manifest_path_for
from covidedge.errors import BadInputError, IncompatibleModelError
from tests.serve.conftest import needs_serve_extra

pytestmark = needs_serve_extra


def parsed(repo_path, name):
    from covidedge.serve.config import message_to_dict, parse_pbtxt

    path = repo_path / name / "config.pbtxt"
    return message_to_dict(parse_pbtxt(path.read_text(), source=path))


def test_cpu_repository_runs_covidedge_python_models(models, tmp_path):
    from covidedge.serve.repository import write_repository

    cls, seg = models
    repo = write_repository(tmp_path / "repo", cls, seg, target="cpu", max_batch=6, instances=2,
                            queue_delay_us=300, threshold=0.4)
    names = sorted(p.name for p in repo.path.iterdir() if p.is_dir())
    assert names == ["classifier", "covidedge", "postprocess", "preprocess", "segmenter"]
    for name in names:
        c = parsed(repo.path, name)
        assert c["name"] == name
        assert int(c["max_batch_size"]) == 6
    for task, spec_out in (("classifier", ["3"]), ("segmenter", ["2", "32", "32"])):
        c = parsed(repo.path, task)
        assert c["backend"] == "python"
        assert c["input"][0] == {"name": "image", "data_type": "TYPE_FP32", "dims": ["1", "32", "32"]}
        assert c["output"][0]["dims"] == spec_out
        assert c["dynamic_batching"] == {"max_queue_delay_microseconds": "300"}
        assert c["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        assert c["parameters"]["model_file"]["string_value"] == "model.onnx"
        assert (repo.path / task / "1" / "model.onnx").read_bytes() == (cls if task == "classifier" else seg).read_bytes()
        assert "NetworkModel as TritonPythonModel" in (repo.path / task / "1" / "model.py").read_text()
    post = parsed(repo.path, "postprocess")
    assert post["parameters"]["threshold"]["string_value"] == "0.4"
    assert json.loads(post["parameters"]["labels"]["string_value"]) == ["COVID-19", "Non-COVID", "Normal"]
    ens = parsed(repo.path, "covidedge")
    assert ens["platform"] == "ensemble"
    assert ens["input"] == [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": ["1"]}]
    assert [s["model_name"] for s in ens["ensemble_scheduling"]["step"]] == \
        ["preprocess", "classifier", "segmenter", "postprocess"]
    assert {o["name"] for o in ens["output"]} == {"IMAGE_SIZE", "LABEL", "PROBABILITIES", "LUNG_MASK",
                                                   "INFECTION_MASK", "LUNG_FRACTION", "INFECTED_FRACTION"}
    facts = json.loads((repo.path / "covidedge-repository.json").read_text())
    assert facts["target"] == "cpu" and facts["threshold"] == 0.4
    assert json.loads(ens["parameters"]["covidedge"]["string_value"])["labels"] == facts["labels"]


def test_cpu_networks_can_run_on_openvino(models, tmp_path):
    from covidedge.serve.repository import plan_repository

    repo = plan_repository(tmp_path / "repo", *models, backend="openvino", threads=2)
    for task in ("classifier", "segmenter"):
        params = repo.configs[task]["parameters"]
        assert params["runtime"] == {"string_value": "openvino"}
        assert params["threads"] == {"string_value": "2"}
    with pytest.raises(BadInputError, match="openvino applies to --target cpu only"):
        plan_repository(tmp_path / "repo", *models, backend="openvino", target="gpu")
    assert not (tmp_path / "repo").exists()  # planning writes nothing


def test_without_dynamic_batching_each_request_runs_alone(models, tmp_path):
    from covidedge.serve.repository import write_repository

    repo = write_repository(tmp_path / "repo", models[0], None, dynamic_batching=False)
    c = parsed(repo.path, "classifier")
    assert "dynamic_batching" not in c
    assert not (repo.path / "segmenter").exists()
    ens = parsed(repo.path, "covidedge")
    assert {o["name"] for o in ens["output"]} == {"IMAGE_SIZE", "LABEL", "PROBABILITIES"}


def test_gpu_repository_serves_the_plan_and_onnx_on_triton_backends(models, trt_engine, tmp_path):
    from covidedge.serve.repository import write_repository

    repo = write_repository(tmp_path / "repo", trt_engine, models[1], target="gpu", instances=2)
    cls = parsed(repo.path, "classifier")
    assert cls["platform"] == "tensorrt_plan" and "backend" not in cls
    assert cls["default_model_filename"] == "model.plan"
    assert int(cls["max_batch_size"]) == 4  # from the manifest
    assert cls["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert cls["input"][0]["dims"] == ["1", "16", "16"]
    assert "dynamic_batching" in cls
    plan = repo.path / "classifier" / "1" / "model.plan"
    assert plan.read_bytes() == trt_engine.read_bytes()
    assert manifest_path_for(plan).read_text() == manifest_path_for(trt_engine).read_text()
    assert not (repo.path / "classifier" / "1" / "model.py").exists()
    seg = parsed(repo.path, "segmenter")
    assert seg["backend"] == "onnxruntime" and seg["default_model_filename"] == "model.onnx"
    assert int(seg["max_batch_size"]) == 4  # the ensemble's batch is the smallest network's
    assert int(parsed(repo.path, "covidedge")["max_batch_size"]) == 4
    assert parsed(repo.path, "preprocess")["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    facts = json.loads((repo.path / "covidedge-repository.json").read_text())
    assert facts["models"]["classifier"]["tensorrt"] == "10.3.0.30"


def test_schema_refuses_what_triton_would_refuse():
    from covidedge.serve.config import parse_pbtxt, to_pbtxt

    with pytest.raises(ValueError, match="TYPE_FP23"):
        to_pbtxt({"name": "m", "input": [{"name": "x", "data_type": "TYPE_FP23", "dims": [1]}]})
    with pytest.raises(ValueError, match="max_batch"):
        to_pbtxt({"name": "m", "max_batch": 4})
    with pytest.raises(ValueError, match="not a valid Triton model config"):
        parse_pbtxt('name: "m" dynamic_batching { queue_delay: 3 }')


def test_refusals_name_the_file_and_what_to_do(models, trt_engine, tmp_path):
    from covidedge.serve.repository import write_repository

    cls, seg = models
    with pytest.raises(IncompatibleModelError, match="TensorRT engine.*--target gpu"):
        write_repository(tmp_path / "a", trt_engine, None, target="cpu")
    with pytest.raises(IncompatibleModelError, match="segmenter model, but a classifier was expected"):
        write_repository(tmp_path / "b", seg, None)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(BadInputError, match="not an empty folder"):
        write_repository(tmp_path / "c", cls, seg)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["keep.txt"]
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"PK\x03\x04")
    with pytest.raises(IncompatibleModelError, match="checkpoint.*build-engine"):
        write_repository(tmp_path / "d", ckpt, None)
    # nothing half-written was left next to the refused repositories
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "c", "cls.fp16.trt10.3.sm89.engine",
                                                           "cls.fp16.trt10.3.sm89.engine.manifest.json"]
