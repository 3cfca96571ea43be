"""run_inference: the one inference API under ``covidedge infer``, and its agreement with evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from covidedge.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, BadInputError
from covidedge.runtime.run import run_inference

IMAGE_SIZE = 48   # the images and ground-truth masks
MODEL_SIZE = 32   # the segmenter's input: masks are upsampled to the image's size


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from covidedge.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), per_class=2, splits=("Val",),
                                  size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the test model is made with torch")
    from tests.graphs import tiny_checkpoint

    torch.manual_seed(3)
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "seg.pt", "segmenter", MODEL_SIZE, base_width=4)


def _read_mask(path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def test_evaluate_scores_exactly_the_masks_infer_writes(data_root, segmenter, tmp_path):
    from covidedge.data.covidqu import CovidQuDataset
    from covidedge.data.imageio import read_mask
    from covidedge.evaluation import evaluate
    from covidedge.metrics import dice

    samples = CovidQuDataset(data_root).samples("Val")
    threshold = 0.55
    report = evaluate(segmenter, data_root, "Val", threshold=threshold, backend="torch", progress=False)
    out = tmp_path / "out"
    summary = run_inference([s.image for s in samples], segmenter=segmenter, threshold=threshold,
                            backend="torch", out_dir=out, overlay=False)
    assert summary.ok == len(samples) and summary.exit_code == EXIT_OK
    by_name = {r["name"]: r for r in report.per_image}
    compared = 0
    for s in samples:
        lungs = _read_mask(out / f"{s.image.stem}_lungs.png")
        infection = _read_mask(out / f"{s.image.stem}_infection.png")
        assert lungs.shape == (IMAGE_SIZE, IMAGE_SIZE)  # written at the image's size, not the model's
        rec = by_name[s.name]
        assert dice(lungs, read_mask(s.lung_mask, image=s.image)) == rec["lung_dice"]
        true_inf = (read_mask(s.infection_mask, image=s.image) if s.infection_mask is not None
                    else np.zeros_like(lungs))
        assert dice(infection, true_inf) == rec["infection_dice"]
        assert 0 < lungs.sum() < lungs.size  # a mask with something to disagree about
        compared += 1
    assert compared == len(samples) == 6


def test_results_file_streams_and_counts_match(data_root, segmenter, tmp_path):
    from covidedge.data.covidqu import CovidQuDataset

    images = [s.image for s in CovidQuDataset(data_root).samples("Val")][:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    seen, notes = [], []
    summary = run_inference([*images, bad], segmenter=segmenter, backend="torch", out_dir=tmp_path / "o",
                            results_format="jsonl", on_result=seen.append, on_note=notes.append)
    assert (summary.images, summary.ok, summary.failed) == (4, 3, 1)
    assert summary.exit_code == EXIT_PARTIAL
    assert summary.results_path == tmp_path / "o" / "results.jsonl"
    lines = [json.loads(x) for x in summary.results_path.read_text().splitlines()]
    assert len(lines) == len(seen) == 4
    assert any(n.startswith("skipped: ") and "broken.png" in n for n in notes)
    assert "4 images: 3 ok, 1 failed" in summary.line()


def test_a_second_run_never_overwrites_the_first_results(data_root, segmenter, tmp_path):
    from covidedge.data.covidqu import CovidQuDataset

    image = CovidQuDataset(data_root).samples("Val")[0].image
    results = tmp_path / "r.csv"
    run_inference([image], segmenter=segmenter, backend="torch", results=results)
    before = results.read_bytes()
    with pytest.raises(BadInputError, match="already holds results"):
        run_inference([image], segmenter=segmenter, backend="torch", results=results)
    assert results.read_bytes() == before
    assert list(csv.DictReader(results.open()))[0]["source"] == str(image)


def test_all_failed_and_nothing_found(segmenter, tmp_path):
    bad = tmp_path / "a.png"
    bad.write_bytes(b"\x89PNG broken")
    summary = run_inference([bad], segmenter=segmenter, backend="torch")
    assert summary.exit_code == EXIT_BAD_INPUT
    with pytest.raises(BadInputError, match="no images to process"):
        run_inference([tmp_path / "nothing-here"], segmenter=segmenter, backend="torch")


def test_refuses_options_it_cannot_honour(segmenter, tmp_path):
    from covidedge.runtime.pipeline import Pipeline

    with Pipeline(segmenter=segmenter, backend="torch") as pipe:
        with pytest.raises(BadInputError, match="ready pipeline"):
            run_inference([tmp_path], pipeline=pipe, threshold=0.3)
    with pytest.raises(BadInputError, match="results format"):
        run_inference([tmp_path], segmenter=segmenter, backend="torch", results=tmp_path / "x.csv",
                      results_format="xml")
    with pytest.raises(BadInputError, match="applies to a results file"):
        run_inference([tmp_path], segmenter=segmenter, backend="torch", results_format="jsonl")


def test_the_api_refuses_options_that_would_be_ignored(data_root, segmenter):
    """Each of these was once accepted and silently dropped."""
    from covidedge.bench.timing import time_end_to_end
    from covidedge.errors import EXIT_USAGE, UsageError
    from covidedge.evaluation import evaluate
    from covidedge.runtime import load
    from covidedge.runtime.pipeline import Pipeline, Segmenter

    ready = Segmenter(segmenter, threshold=0.3, backend="torch")
    with pytest.raises(UsageError, match="does not apply to a ready Segmenter") as exc:
        Pipeline(segmenter=ready, threshold=0.6)
    assert exc.value.exit_code == EXIT_USAGE
    assert Pipeline(segmenter=ready, threshold=0.3).threshold == 0.3  # the same value is no conflict
    with pytest.raises(UsageError, match="does not apply to a ready Segmenter running on torch"):
        Pipeline(segmenter=ready, backend="onnxruntime")
    with pytest.raises(UsageError, match="do not apply to a ready Segmenter"):
        Pipeline(segmenter=ready, intra_op_threads=1)
    runner = load(segmenter, backend="torch")
    with pytest.raises(UsageError, match="does not apply to a ready torch runner"):
        Pipeline(segmenter=runner, backend="onnxruntime")
    with pytest.raises(UsageError, match="does not apply to a ready torch runner"):
        evaluate(runner, data_root, backend="onnxruntime", progress=False)
    with pytest.raises(UsageError, match="does not apply to a pipeline"):
        time_end_to_end(Pipeline(segmenter=ready), [data_root], threshold=0.7)
