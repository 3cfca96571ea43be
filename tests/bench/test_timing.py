"""covidedge.bench.timing: statistics against hand-computed values, and the timing loops' bookkeeping.

No test asserts how fast anything is: only counts, shapes, units and formulas."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from covidedge.bench.timing import (
    MIN_ITERATIONS, UNSTABLE_CV, LatencyStats, mean, percentile, stability_warning, stdev,
    summarize, time_callable, time_end_to_end, time_runner,
)
from covidedge.errors import BadInputError
from covidedge.backends.base import Runner
from covidedge.backends.onnxruntime import OrtRunner
from covidedge.runtime.pipeline import Pipeline
from covidedge.spec import classifier_spec
from tests.graphs import tiny_classifier_onnx, tiny_segmenter_onnx


# -- pure statistics ----------------------------------------------------------------------------
def test_percentile_linear_interpolation_by_hand():
    v = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4, positions 0..3
    assert percentile(v, 0) == 1.0
    assert percentile(v, 100) == 4.0
    assert percentile(v, 50) == pytest.approx(2.5)    # position 1.5 -> 2 + 0.5 * (3 - 2)
    assert percentile(v, 90) == pytest.approx(3.7)    # position 2.7 -> 3 + 0.7 * (4 - 3)
    assert percentile(v, 99) == pytest.approx(3.97)   # position 2.97
    assert percentile(v, 25) == pytest.approx(1.75)   # position 0.75 -> 1 + 0.75 * (2 - 1)
    assert percentile([7.5], 99) == 7.5
    # numpy's default method is the same definition
    rng = np.random.default_rng(1)
    sample = rng.random(37).tolist()
    for q in (50, 90, 95, 99):
        assert percentile(sample, q) == pytest.approx(float(np.percentile(sample, q)), rel=1e-12)


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(BadInputError, match="no values"):
        percentile([], 50)
    with pytest.raises(BadInputError, match="outside 0..100"):
        percentile([1.0], 101)


def test_mean_stdev_summarize_by_hand():
    v = [2, 4, 4, 4, 5, 5, 7, 9]  # sum 40, squared deviations 9+1+1+1+0+0+4+16 = 32
    assert mean(v) == 5.0
    assert stdev(v) == pytest.approx(math.sqrt(32 / 7))  # sample standard deviation (n - 1)
    s = summarize(v)
    assert s["n"] == 8 and s["min"] == 2 and s["max"] == 9
    assert s["median"] == pytest.approx(4.5)      # position 3.5 between 4 and 5
    assert s["p90"] == pytest.approx(7.6)         # position 6.3 -> 7 + 0.3 * (9 - 7)
    assert s["p95"] == pytest.approx(8.3)         # position 6.65
    assert s["p99"] == pytest.approx(8.86)        # position 6.93
    assert s["cv"] == pytest.approx(math.sqrt(32 / 7) / 5)
    assert stdev([3.0]) == 0.0


def test_latency_stats_derived_figures():
    st = LatencyStats.from_samples([10.0, 10.0, 10.0, 10.0], batch=4, warmup=2)
    assert (st.n, st.batch, st.warmup) == (4, 4, 2)
    assert st.median_ms == 10.0 and st.ms_per_image == 2.5          # median / batch
    assert st.throughput == pytest.approx(400.0)                    # 4 runs x 4 images / 0.040 s
    assert st.batches_per_s == pytest.approx(100.0)
    assert st.total_s == pytest.approx(0.040)
    assert st.cv == 0.0 and not st.unstable and st.warning is None
    d = st.to_dict()
    assert d["samples_ms"] == [10.0] * 4 and d["batches_per_s"] == pytest.approx(100.0)
    assert "samples_ms" not in st.to_dict(samples=False)


def test_throughput_uses_total_time_not_median():
    st = LatencyStats.from_samples([10.0, 10.0, 40.0], batch=2)
    assert st.median_ms == 10.0 and st.ms_per_image == 5.0
    assert st.throughput == pytest.approx(3 * 2 * 1000 / 60.0)  # 100 images/s, not 200


def test_unstable_flag_and_warning_names_the_threshold():
    st = LatencyStats.from_samples([10.0, 20.0, 10.0, 20.0], batch=1)
    # mean 15, sample std sqrt(4 * 25 / 3) = 5.7735 -> cv 38.5 %
    assert st.cv == pytest.approx(math.sqrt(100 / 3) / 15)
    assert st.unstable
    assert "38.5 %" in st.warning and "10 % threshold" in st.warning
    assert UNSTABLE_CV == 0.10
    assert stability_warning(0.10) is None
    assert stability_warning(0.1001) is not None


def test_stage_timings_are_summarised():
    st = LatencyStats.from_samples([5.0, 6.0], batch=1, stages={"compute": [2.0, 4.0], "h2d": [1.0, 1.0]})
    assert st.stages["compute"]["median"] == pytest.approx(3.0)
    assert st.stages["h2d"]["max"] == 1.0


# -- timing loops -------------------------------------------------------------------------------
def test_time_callable_counts_warmup_and_iterations():
    calls = []
    st = time_callable(lambda: calls.append(1), batch=3, warmup=4, iterations=7)
    assert len(calls) == 11 and st.n == 7 and st.warmup == 4 and st.batch == 3
    assert len(st.samples_ms) == 7 and all(s >= 0 for s in st.samples_ms)


def test_time_callable_duration_runs_at_least_min_iterations():
    st = time_callable(lambda: None, batch=1, warmup=0, duration_s=1e-6)
    assert st.n >= MIN_ITERATIONS


@pytest.mark.parametrize("kw, msg", [
    ({"iterations": 5, "duration_s": 1.0}, "exclusive"),
    ({"iterations": 0}, "not positive"),
    ({"duration_s": 0.0}, "not positive"),
    ({"warmup": -1}, "negative"),
])
def test_time_callable_rejects_bad_budgets(kw, msg):
    with pytest.raises(BadInputError, match=msg):
        time_callable(lambda: None, batch=1, **kw)


def test_time_runner_on_onnxruntime(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path, size=8)
    runner = OrtRunner(path, intra_op_threads=1)
    st = time_runner(runner, 2, warmup=1, iterations=5)
    assert st.n == 5 and st.batch == 2
    assert st.min_ms <= st.median_ms <= st.p99_ms <= st.max_ms
    assert not runner.is_active  # activated for the measurement only
    with runner:
        time_runner(runner, 1, warmup=0, iterations=2)
        assert runner.is_active  # a caller's active runner stays active
        with pytest.raises(BadInputError, match="batch of 3"):
            time_runner(runner, 3, iterations=1, inputs=np.zeros((2, 1, 8, 8), np.float32))


class StagedRunner(Runner):
    """A runner whose backend reports device stages, as the TensorRT and CUDA torch runners do."""

    backend = "staged"

    def _activate(self):
        pass

    def _infer(self, x):
        self._stage_ms = {"h2d": 0.25, "compute": 1.5, "d2h": 0.125}
        n = x.shape[0]
        return {"logits": np.zeros((n, 3), np.float32), "probabilities": np.full((n, 3), 1 / 3, np.float32)}


def test_time_runner_collects_device_stages():
    runner = StagedRunner(classifier_spec(input_size=(8, 8)), "staged")
    st = time_runner(runner, 4, warmup=0, iterations=3)
    assert set(st.stages) == {"h2d", "compute", "d2h"}
    assert st.stages["compute"]["median"] == 1.5 and st.stages["compute"]["n"] == 3
    assert st.stages["d2h"]["mean"] == 0.125


# -- end to end ---------------------------------------------------------------------------------
def _write_pngs(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L").save(p)
        paths.append(p)
    return paths


def test_end_to_end_classifier_stages(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path, size=8)
    files = _write_pngs(tmp_path / "imgs", [(20, 30), (16, 16), (40, 24)])
    runner = OrtRunner(path, intra_op_threads=1)
    e2e = time_end_to_end(runner, files, warmup=1, repeats=2)
    assert e2e.n_images == 6 and e2e.source == "runner"
    assert list(e2e.stages) == ["decode", "preprocess", "inference", "postprocess", "total"]
    parts = sum(e2e.stages[k]["mean"] for k in ("decode", "preprocess", "inference", "postprocess"))
    assert parts <= e2e.stages["total"]["mean"] * 1.0001
    assert e2e.images_per_s == pytest.approx(1000.0 / e2e.stages["total"]["mean"])
    assert not runner.is_active
    assert set(e2e.to_dict()["medians_ms"]) == set(e2e.stages)


def test_end_to_end_segmenter_resizes_masks(tmp_path, monkeypatch):
    path = tmp_path / "seg.onnx"
    tiny_segmenter_onnx(path, size=8)
    files = _write_pngs(tmp_path / "imgs", [(20, 30)])
    import covidedge.runtime.pipeline as pipeline  # a runner is timed through the Pipeline

    shapes = []
    real = pipeline.Pipeline.predict

    def spy(self, path, **kw):
        result = real(self, path, **kw)
        shapes.extend(m.shape for m in (result.lung_mask, result.infection_mask))
        return result

    monkeypatch.setattr(pipeline.Pipeline, "predict", spy)
    e2e = time_end_to_end(OrtRunner(path, intra_op_threads=1), files, warmup=0)
    assert e2e.n_images == 1
    assert shapes == [(20, 30), (20, 30)]  # both mask channels back at the image's own size


@dataclass
class _Result:
    timings_ms: dict = field(default_factory=dict)


class _FakePipeline:
    """Stands in for covidedge.runtime.pipeline.Pipeline: predict(path) -> result with timings_ms."""

    def __init__(self):
        self.entered = self.exited = 0
        self.seen = []

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc):
        self.exited += 1

    def predict(self, path):
        self.seen.append(path)
        return _Result({"decode": 1.0, "preprocess": 2.0, "inference": 3.0, "postprocess": 4.0, "total": 10.0})


def test_end_to_end_with_a_pipeline_uses_its_stage_times(tmp_path):
    pipe = _FakePipeline()
    e2e = time_end_to_end(pipe, ["a.png", "b.png"], warmup=1)
    assert e2e.source == "pipeline" and e2e.n_images == 2
    assert pipe.seen == ["a.png", "a.png", "b.png"]  # one warm-up, then each file
    assert e2e.median("inference") == 3.0 and e2e.median("postprocess") == 4.0
    assert e2e.stages["total"]["n"] == 2  # total is measured around predict(), not copied
    assert (pipe.entered, pipe.exited) == (1, 1)


def test_end_to_end_needs_files():
    with pytest.raises(BadInputError, match="no image files"):
        time_end_to_end(_FakePipeline(), [])


def test_end_to_end_with_the_real_pipeline(tmp_path):
    path = tmp_path / "tiny.onnx"
    tiny_classifier_onnx(path, size=8)
    files = _write_pngs(tmp_path / "imgs", [(20, 30), (16, 16)])
    e2e = time_end_to_end(Pipeline(classifier=str(path)), files, warmup=1)
    assert e2e.source == "pipeline" and e2e.n_images == 2
    assert {"decode", "preprocess", "inference", "postprocess", "total"} <= set(e2e.stages)
