"""What the DICOM objects say about the algorithm: name, version and a model id per task."""

from __future__ import annotations

from types import SimpleNamespace

from covidedge import __version__
from covidedge.dicom.writers import AlgorithmInfo
from covidedge.fileio import sha256_file
from covidedge.runtime.pipeline import Pipeline


def test_model_ids_name_the_model_its_file_and_its_sha256(models):
    cls, seg = models
    info = AlgorithmInfo.from_pipeline(Pipeline(classifier=str(cls), segmenter=str(seg), threshold=0.4))
    assert (info.name, info.version) == ("covidedge", __version__)
    assert info.model_id("classifier") == f"tiny cls.onnx sha256:{sha256_file(cls)[:12]}"
    assert info.parameters("segmenter") == {"segmenter": f"tiny seg.onnx sha256:{sha256_file(seg)[:12]}",
                                            "threshold": "0.4"}


def test_models_served_elsewhere_are_named_by_their_source():
    remote = SimpleNamespace(task="segmenter", source="seg.int8.onnx")  # no spec, no local file
    info = AlgorithmInfo.from_pipeline(SimpleNamespace(models=[remote], threshold=0.5))
    assert info.models == (("segmenter", "seg.int8.onnx (served)"),)
