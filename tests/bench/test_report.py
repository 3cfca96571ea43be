"""covidedge.bench.report: every figure in the JSON, the table layout, text blocks and saved files."""

from __future__ import annotations

import json

import pytest

from covidedge.bench.report import (
    TABLE_COLUMNS, BenchReport, BenchRow, file_size_mb, machine_summary,
)
from covidedge.bench.timing import EndToEndStats, LatencyStats, summarize
from covidedge.machine import ISA_FLAGS, cpu_isa

MACHINE = {"cpu": "Test CPU 3000", "cpu_cores": 4, "memory_mib": 8192, "onnxruntime": "1.32.0",
           "tensorrt": None, "torch": "2.13.0", "gpu": None, "os": "Linux", "python": "3.11.7"}


def _report():
    steady = LatencyStats.from_samples([10.0, 10.0, 10.0, 10.0], batch=4, warmup=2)
    gpu = LatencyStats.from_samples([2.0, 2.0], batch=1,
                                    stages={"h2d": [0.2, 0.2], "compute": [1.5, 1.5], "d2h": [0.1, 0.1]})
    shaky = LatencyStats.from_samples([10.0, 20.0, 10.0, 20.0], batch=1)
    e2e = EndToEndStats(n_images=2, stages={k: summarize([v, v]) for k, v in
                                            {"decode": 1.0, "preprocess": 0.5, "inference": 3.0,
                                             "postprocess": 0.25, "total": 4.75}.items()},
                        images_per_s=1000 / 4.75, source="runner", warmup=1)
    rep = BenchReport(machine=dict(MACHINE), settings={"warmup": 2, "iterations": 4, "duration_s": None})
    rep.add(BenchRow(model="cls.onnx", backend="onnxruntime", precision="fp32", batch=4, latency=steady,
                     task="classifier", size_mb=1.234, metric_name="accuracy", metric_value=0.8333,
                     metric_detail={"split": "Val", "n_images": 12},
                     settings={"threads": {"intra_op": 2, "inter_op": 1}, "providers": ["CPUExecutionProvider"]},
                     end_to_end=e2e))
    rep.add(BenchRow(model="cls.engine", backend="tensorrt", precision="fp16", batch=1, latency=gpu,
                     task="classifier", size_mb=0.5))
    rep.add(BenchRow(model="seg|x.onnx", backend="onnxruntime", precision="int8", batch=1, latency=shaky))
    rep.skip("cls.engine", 32, "batch 32 is outside this model's batch range 1..8")
    return rep


def test_json_contains_every_figure():
    d = json.loads(_report().to_json())
    assert d["machine"]["cpu"] == "Test CPU 3000"
    assert set(d["columns"]) == set(TABLE_COLUMNS)
    row = d["rows"][0]
    assert (row["model"], row["backend"], row["precision"], row["batch"]) == ("cls.onnx", "onnxruntime", "fp32", 4)
    assert row["size_mb"] == pytest.approx(1.234)
    assert row["metric"] == {"name": "accuracy", "value": 0.8333, "split": "Val", "n_images": 12}
    assert row["ms_per_image"] == 2.5 and row["p50_ms"] == 10.0 and row["p99_ms"] == 10.0
    assert row["fps"] == pytest.approx(400.0)
    lat = row["latency"]
    for key in ("n", "min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms",
                "cv", "ms_per_image", "throughput", "batches_per_s", "warmup", "total_s", "unstable",
                "warning", "stages", "samples_ms"):
        assert key in lat, key
    assert lat["samples_ms"] == [10.0] * 4 and lat["warmup"] == 2
    assert row["settings"]["threads"] == {"intra_op": 2, "inter_op": 1}
    assert row["end_to_end"]["medians_ms"]["inference"] == 3.0
    gpu = d["rows"][1]["latency"]["stages"]
    assert gpu["compute"]["median"] == 1.5 and gpu["h2d"]["mean"] == 0.2 and gpu["d2h"]["p99"] == 0.1
    assert d["rows"][1]["metric"] is None
    assert d["skipped"] == [{"model": "cls.engine", "batch": 32,
                             "reason": "batch 32 is outside this model's batch range 1..8"}]
    assert len(d["warnings"]) == 1 and "seg|x.onnx" in d["warnings"][0] and "10 % threshold" in d["warnings"][0]
    assert d["rows"][2]["latency"]["unstable"] is True
    assert d["settings"]["iterations"] == 4


def test_markdown_table_layout():
    md = _report().to_markdown()
    lines = md.splitlines()
    header = "| model | backend | precision | size MB | batch | metric | ms/image | p50 | p99 | FPS |"
    i = lines.index(header)
    assert lines[i + 1] == "|---|---|---|---:|---:|---|---:|---:|---:|---:|"
    assert lines[i + 2] == "| cls.onnx | onnxruntime | fp32 | 1.2 | 4 | accuracy 0.833 | 2.50 | 10.00 | 10.00 | 400.0 |"
    assert lines[i + 3] == "| cls.engine | tensorrt | fp16 | 0.5 | 1 | - | 2.00 | 2.00 | 2.00 | 500.0 |"
    assert lines[i + 4].startswith("| seg\\|x.onnx | onnxruntime | int8 | - | 1 | - |")  # pipes escaped
    assert "- skipped: cls.engine batch 32: batch 32 is outside this model's batch range 1..8" in lines
    assert any(line.startswith("- warning: seg|x.onnx onnxruntime int8 batch 1: unstable timing") for line in lines)
    m = lines.index("## Machine")
    assert "- CPU: Test CPU 3000" in lines[m:] and "- CPU cores: 4" in lines[m:]
    assert "- versions: onnxruntime 1.32.0, torch 2.13.0" in lines[m:]
    assert "4 timed runs" in md and "after 2 warm-up runs" in md


def test_text_has_trtexec_like_blocks_and_the_table():
    text = _report().to_text()
    assert "=== cls.onnx | onnxruntime fp32 | batch 4 ===" in text
    assert "Throughput: 400.00 images/s (100.00 batches/s)" in text
    assert ("Latency (ms per batch): min = 10.00, max = 10.00, mean = 10.00, median = 10.00, "
            "percentile(90%) = 10.00, percentile(95%) = 10.00, percentile(99%) = 10.00") in text
    assert "Latency per image: 2.50 ms (median / batch)" in text
    assert "GPU Compute Time: min = 1.50, mean = 1.50, median = 1.50, percentile(99%) = 1.50 ms" in text
    assert "H2D Latency: min = 0.200" in text and "D2H Latency: min = 0.100" in text
    assert "Settings: intra_op=2 inter_op=1; providers=CPUExecutionProvider" in text
    assert "Metric: accuracy = 0.8333 (split Val, n_images 12)" in text
    assert "End to end over 2 images (median ms): decode 1.00, preprocess 0.500, inference 3.00" in text
    assert "WARNING: unstable timing: coefficient of variation 38.5 %" in text
    assert "Timed: 4 runs in 0.04 s after 2 warm-up runs; coefficient of variation 0.0 %" in text
    table = [ln for ln in text.splitlines() if ln.startswith("model ")]
    assert len(table) == 1 and table[0].split() == ["model", "backend", "precision", "size", "MB", "batch",
                                                     "metric", "ms/image", "p50", "p99", "FPS"]
    assert "skipped: cls.engine batch 32" in text
    assert "machine:\n  CPU: Test CPU 3000" in text


def test_save_writes_json_markdown_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    rep = _report()
    paths = rep.save(tmp_path / "out")
    assert paths["json"].name == "bench.json" and paths["markdown"].name == "bench.md"
    assert json.loads(paths["json"].read_text())["rows"][0]["model"] == "cls.onnx"
    assert paths["markdown"].read_text() == rep.to_markdown()
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_empty_report_saves_without_plot(tmp_path):
    rep = BenchReport(machine=dict(MACHINE))
    paths = rep.save(tmp_path)
    assert paths["png"] is None and json.loads(paths["json"].read_text())["rows"] == []
    assert "(no rows measured)" in rep.to_text()


def test_machine_summary_shows_gpu_and_jetson_facts():
    jetson = {"cpu": "ARMv8 Processor rev 1 (v8l)", "cpu_cores": 6, "gpu": "Orin",
              "gpu_compute_capability": "8.7", "tensorrt": "10.3.0", "l4t_release": "36.4.0",
              "power_mode": "MAXN (mode 0)", "jetson_gpu_clock_locked": True,
              "gpu_clocks": "1300 / 1300 MHz (now / max)", "something_new": "kept"}
    lines = machine_summary(jetson)
    assert "GPU: Orin" in lines and "GPU compute capability: 8.7" in lines
    assert "Jetson power mode: MAXN (mode 0)" in lines and "Jetson GPU clock locked: True" in lines
    assert "L4T release: 36.4.0" in lines and "versions: tensorrt 10.3.0" in lines
    assert "GPU clocks: 1300 / 1300 MHz (now / max)" in lines
    assert lines[-1] == "something_new: kept"
    assert machine_summary({}) == ["unknown (the machine was not probed)"]


def test_cpu_isa_and_file_size(tmp_path):
    assert set(cpu_isa()) <= set(ISA_FLAGS)
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x" * 2_500_000)
    assert file_size_mb(f) == 2.5  # MB = 10^6 bytes
    assert file_size_mb(tmp_path / "missing") is None


# -- helpers of covidedge.bench that feed the report ----------------------------------------
class _Eval:
    def __init__(self, task, metrics, split="Val", num_images=9):
        self.task, self.metrics, self.split, self.num_images = task, metrics, split, num_images


def test_metric_from_evaluation():
    from covidedge.bench import metric_from_evaluation

    assert metric_from_evaluation(_Eval("classifier", {"accuracy": 0.75})) == {
        "name": "accuracy", "value": 0.75, "split": "Val", "n_images": 9}
    seg = metric_from_evaluation(_Eval("segmenter", {"infection_dice": 0.5, "lung_dice": 0.9}))
    assert (seg["name"], seg["value"], seg["lung_dice"]) == ("infection Dice", 0.5, 0.9)
    # no COVID-19 image in the split: infection Dice is undefined, lung Dice stands in
    seg = metric_from_evaluation(_Eval("segmenter", {"infection_dice": float("nan"), "lung_dice": 0.9}))
    assert (seg["name"], seg["value"]) == ("lung Dice", 0.9)


class _Range:
    def __init__(self, lo, hi):
        self.min_batch, self.max_batch = lo, hi


def test_batch_skip_reason():
    from covidedge.bench import batch_skip_reason

    assert batch_skip_reason(_Range(1, None), 64) is None
    assert batch_skip_reason(_Range(1, 8), 8) is None
    assert batch_skip_reason(_Range(1, 8), 32) == ("batch 32 is outside this model's batch range 1..8; "
                                                   "rebuild the engine with --max-batch 32 to time it")
    assert "--min-batch 1" in batch_skip_reason(_Range(2, 8), 1)
    assert "fixed batch of 4" in batch_skip_reason(_Range(4, 4), 1)
