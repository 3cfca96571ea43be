"""Benchmark reports: one row per model x backend x precision x batch, plus the machine they ran on.

A report prints two ways at once: a trtexec-like block per row (throughput; latency min / mean /
median / percentiles; device stages; warnings) for people who tune, and one table of
model | backend | precision | size MB | batch | metric | ms/image | p50 | p99 | FPS for people who
choose. ``save(dir)`` writes bench.json (every figure), bench.md (the table and the machine) and
bench.png (ms per image and FPS bars).

Units: latency in milliseconds per batch (p50 / p99 columns) or per image (ms/image = median
batch latency / batch); FPS = images per second over all timed runs; size in MB = 10^6 bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from covidedge.bench.timing import EndToEndStats, LatencyStats
from covidedge.fileio import write_atomic
from covidedge.machine import PACKAGE_KEYS, probe_latency_facts, probe_machine

TABLE_COLUMNS = ("model", "backend", "precision", "size MB", "batch", "metric", "ms/image",
                 "p50", "p99", "FPS")

_LEFT_COLUMNS = ("model", "backend", "precision", "metric")

#: What each table column means (used by ``to_markdown`` and the benchmarks README).
COLUMN_HELP = {
    "model": "the model file (checkpoint, ONNX model or engine)",
    "backend": "the runtime that ran it (tensorrt, onnxruntime, torch)",
    "precision": "the precision in the graph or engine (fp32, fp16, int8)",
    "size MB": "size of the model file in MB (10^6 bytes)",
    "batch": "images per inference call",
    "metric": "accuracy (classifier) or Dice (segmenter) on a data split, when --data was given",
    "ms/image": "median latency of one call divided by the batch size (ms)",
    "p50": "median latency of one call (ms per batch)",
    "p99": "99th percentile latency of one call (ms per batch)",
    "FPS": "images per second over all timed calls",
}


def file_size_mb(path) -> Optional[float]:
    """Size of ``path`` in MB (10^6 bytes), or None when it is not a file."""
    try:
        return os.path.getsize(path) / 1e6
    except OSError:
        return None


def _fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _fmt_ms(value: Optional[float]) -> str:
    """Milliseconds with three significant-ish digits: 0.123, 1.23, 12.3, 123."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:.1f}"


@dataclass
class BenchRow:
    """One measurement: a model on one backend and precision at one batch size."""

    model: str
    backend: str
    precision: str
    batch: int
    latency: LatencyStats
    task: Optional[str] = None
    path: Optional[str] = None
    size_mb: Optional[float] = None
    metric_name: Optional[str] = None
    metric_value: Optional[float] = None
    metric_detail: Dict[str, Any] = field(default_factory=dict)
    #: How the backend was set up: threads, providers, device, version (Runner.describe()).
    settings: Dict[str, Any] = field(default_factory=dict)
    end_to_end: Optional[EndToEndStats] = None
    note: Optional[str] = None

    @property
    def metric_text(self) -> str:
        if self.metric_value is None:
            return "-"
        return f"{self.metric_name} {self.metric_value:.3f}" if self.metric_name else f"{self.metric_value:.3f}"

    def table_cells(self) -> List[str]:
        lat = self.latency
        return [self.model, self.backend, self.precision, _fmt(self.size_mb, 1), str(self.batch),
                self.metric_text, _fmt_ms(lat.ms_per_image), _fmt_ms(lat.median_ms),
                _fmt_ms(lat.p99_ms), _fmt(lat.throughput, 1)]

    def to_dict(self, samples: bool = True) -> Dict[str, Any]:
        return {
            "model": self.model, "path": self.path, "task": self.task, "backend": self.backend,
            "precision": self.precision, "size_mb": self.size_mb, "batch": self.batch,
            "metric": {"name": self.metric_name, "value": self.metric_value, **self.metric_detail}
            if self.metric_value is not None else None,
            "ms_per_image": self.latency.ms_per_image, "p50_ms": self.latency.median_ms,
            "p99_ms": self.latency.p99_ms, "fps": self.latency.throughput,
            "latency": self.latency.to_dict(samples=samples),
            "settings": self.settings,
            "end_to_end": self.end_to_end.to_dict() if self.end_to_end is not None else None,
            "note": self.note,
        }

    def settings_text(self) -> str:
        s = self.settings or {}
        parts = []
        threads = s.get("threads")
        if isinstance(threads, dict):
            parts.append(" ".join(f"{k}={v}" for k, v in threads.items()))
        elif threads is not None:
            parts.append(f"threads={threads}")
        for key in ("device", "providers", "graph_optimization_level", "version"):
            if s.get(key) not in (None, "", []):
                v = s[key]
                parts.append(f"{key}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
        return "; ".join(parts)

    def to_text(self) -> str:
        """A trtexec-like performance summary of this row."""
        lat = self.latency
        head = f"=== {self.model} | {self.backend} {self.precision} | batch {self.batch} ==="
        lines = [head,
                 f"Throughput: {lat.throughput:.2f} images/s ({lat.batches_per_s:.2f} batches/s)",
                 f"Latency (ms per batch): min = {_fmt_ms(lat.min_ms)}, max = {_fmt_ms(lat.max_ms)}, "
                 f"mean = {_fmt_ms(lat.mean_ms)}, median = {_fmt_ms(lat.median_ms)}, "
                 f"percentile(90%) = {_fmt_ms(lat.p90_ms)}, percentile(95%) = {_fmt_ms(lat.p95_ms)}, "
                 f"percentile(99%) = {_fmt_ms(lat.p99_ms)}",
                 f"Latency per image: {_fmt_ms(lat.ms_per_image)} ms (median / batch)"]
        for stage in ("h2d", "compute", "d2h"):
            if stage in lat.stages:
                st = lat.stages[stage]
                label = {"h2d": "H2D Latency", "compute": "GPU Compute Time", "d2h": "D2H Latency"}[stage]
                lines.append(f"{label}: min = {_fmt_ms(st['min'])}, mean = {_fmt_ms(st['mean'])}, "
                             f"median = {_fmt_ms(st['median'])}, percentile(99%) = {_fmt_ms(st['p99'])} ms")
        for stage, st in lat.stages.items():
            if stage not in ("h2d", "compute", "d2h"):
                lines.append(f"{stage}: median = {_fmt_ms(st['median'])} ms")
        lines.append(f"Timed: {lat.n} runs in {lat.total_s:.2f} s after {lat.warmup} warm-up runs; "
                     f"coefficient of variation {lat.cv * 100:.1f} %")
        if self.size_mb is not None:
            lines.append(f"Model size: {self.size_mb:.2f} MB")
        settings = self.settings_text()
        if settings:
            lines.append(f"Settings: {settings}")
        if self.metric_value is not None:
            extra = ", ".join(f"{k} {v}" for k, v in self.metric_detail.items() if v is not None)
            lines.append(f"Metric: {self.metric_name} = {self.metric_value:.4f}" + (f" ({extra})" if extra else ""))
        if self.end_to_end is not None:
            e = self.end_to_end
            medians = ", ".join(f"{k} {_fmt_ms(v['median'])}" for k, v in e.stages.items())
            lines.append(f"End to end over {e.n_images} images (median ms): {medians}; "
                         f"{e.images_per_s:.2f} images/s")
        if self.note:
            lines.append(f"Note: {self.note}")
        if lat.warning:
            lines.append(f"WARNING: {lat.warning}")
        return "\n".join(lines)


#: Keys of probe_machine() that machine_summary() places on its own lines.
_MACHINE_ORDER = (
    ("cpu", "CPU"), ("cpu_cores", "CPU cores"), ("cpu_isa", "CPU ISA (kernels)"), ("memory_mib", "memory (MiB)"),
    ("gpu", "GPU"), ("gpu_compute_capability", "GPU compute capability"),
    ("gpu_memory_mib", "GPU memory (MiB)"), ("gpu_driver", "GPU driver"),
    ("gpu_clocks", "GPU clocks"), ("cpu_governor", "CPU frequency governor"),
    ("cpu_mhz", "CPU clock (MHz, now / max)"), ("board", "board"), ("l4t_release", "L4T release"),
    ("power_mode", "Jetson power mode"), ("jetson_gpu_clock_locked", "Jetson GPU clock locked"),
    ("os", "OS"), ("arch", "arch"), ("python", "python"),
)
_BACKEND_KEYS = PACKAGE_KEYS


def machine_summary(machine: Dict[str, Any]) -> List[str]:
    """Readable lines about the machine from covidedge.machine.probe_machine()'s dict
    (plus ``probe_latency_facts()``): CPU model and cores, memory, GPU name / clocks / memory, backend
    versions, Jetson power mode. Keys it does not know are listed as they are."""
    if not machine:
        return ["unknown (the machine was not probed)"]
    lines = []
    for key, label in _MACHINE_ORDER:
        v = machine.get(key)
        if v not in (None, "", [], {}):
            lines.append(f"{label}: {v}")
    versions = [f"{k} {machine[k]}" for k in _BACKEND_KEYS if machine.get(k)]
    if versions:
        lines.append("versions: " + ", ".join(versions))
    known = {k for k, _ in _MACHINE_ORDER} | set(_BACKEND_KEYS)
    for k in sorted(set(machine) - known):
        v = machine[k]
        if v not in (None, "", [], {}):
            lines.append(f"{k}: {v}")
    return lines


@dataclass
class BenchReport:
    """Rows measured on one machine in one run, with what was skipped and why."""

    rows: List[BenchRow] = field(default_factory=list)
    machine: Dict[str, Any] = field(default_factory=dict)
    #: Measurements that were asked for and not made: {"model", "batch", "reason"}.
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: How the run was made: warm-up, iterations or duration, data split, threads.
    settings: Dict[str, Any] = field(default_factory=dict)
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc)
                             .replace(microsecond=0).isoformat())

    def add(self, row: BenchRow) -> BenchRow:
        self.rows.append(row)
        return row

    def skip(self, model: str, batch: Optional[int], reason: str) -> Dict[str, Any]:
        entry = {"model": model, "batch": batch, "reason": reason}
        self.skipped.append(entry)
        return entry

    @classmethod
    def for_this_machine(cls, **kw) -> "BenchReport":
        """An empty report whose ``machine`` is probed now (covidedge.machine)."""
        return cls(machine=probe_machine_safely(), **kw)

    # -- outputs --------------------------------------------------------------------------------
    def to_dict(self, samples: bool = True) -> Dict[str, Any]:
        from covidedge import __version__

        return {"covidedge_version": __version__, "created_utc": self.created_utc,
                "settings": self.settings, "machine": self.machine,
                "columns": {c: COLUMN_HELP[c] for c in TABLE_COLUMNS},
                "rows": [r.to_dict(samples=samples) for r in self.rows],
                "skipped": self.skipped, "notes": self.notes,
                "warnings": [f"{r.model} {r.backend} {r.precision} batch {r.batch}: {r.latency.warning}"
                             for r in self.rows if r.latency.warning]}

    def to_json(self, samples: bool = True) -> str:
        return json.dumps(self.to_dict(samples=samples), indent=2, default=str)

    def table_markdown(self) -> str:
        lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
                 "|" + "|".join("---" if c in _LEFT_COLUMNS else "---:" for c in TABLE_COLUMNS) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r.table_cells()) + " |" for r in self.rows]
        return "\n".join(lines)

    def table_text(self) -> str:
        cells = [list(TABLE_COLUMNS)] + [r.table_cells() for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
        out = []
        for j, row in enumerate(cells):
            out.append("  ".join(c.ljust(w) if TABLE_COLUMNS[i] in _LEFT_COLUMNS or j == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))).rstrip())
            if j == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def _tail_lines(self) -> List[str]:
        lines = []
        for s in self.skipped:
            b = f" batch {s['batch']}" if s.get("batch") is not None else ""
            lines.append(f"skipped: {s['model']}{b}: {s['reason']}")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {r.model} {r.backend} {r.precision} batch {r.batch}: {r.latency.warning}"
                  for r in self.rows if r.latency.warning]
        return lines

    def to_markdown(self) -> str:
        s = self.settings
        how = []
        if s.get("iterations") is not None:
            how.append(f"{s['iterations']} timed runs")
        if s.get("duration_s") is not None:
            how.append(f"timed for {s['duration_s']} s")
        if s.get("warmup") is not None:
            how.append(f"after {s['warmup']} warm-up runs")
        parts = ["# covidedge bench", "", f"Measured {self.created_utc}" + (f", {', '.join(how)}" if how else "")
                 + ".", "", self.table_markdown(), ""]
        parts += ["ms/image = median latency per call / batch; p50 and p99 are ms per call; "
                  "FPS = images per second over all timed calls; size MB = 10^6 bytes.", ""]
        tail = self._tail_lines()
        if tail:
            parts += [f"- {t}" for t in tail] + [""]
        parts += ["## Machine", ""] + [f"- {line}" for line in machine_summary(self.machine)] + [""]
        return "\n".join(parts)

    def to_text(self) -> str:
        blocks = [r.to_text() for r in self.rows]
        blocks.append(self.table_text() if self.rows else "(no rows measured)")
        tail = self._tail_lines()
        if tail:
            blocks.append("\n".join(tail))
        blocks.append("machine:\n" + "\n".join(f"  {line}" for line in machine_summary(self.machine)))
        return "\n\n".join(blocks)

    def plot(self, out_png, title: str = "covidedge bench") -> Optional[Path]:
        """ms per image and FPS as horizontal bars, one per row (``covidedge.plots``); None when
        matplotlib is absent."""
        if not self.rows:
            return None
        from covidedge.errors import MissingDependencyError
        from covidedge.plots import plot_latency_bars

        labels = [f"{r.model}\n{r.backend} {r.precision} b{r.batch}" for r in self.rows]
        try:
            return plot_latency_bars(labels, [r.latency.ms_per_image for r in self.rows],
                                     [r.latency.throughput for r in self.rows], out_png, title=title)
        except MissingDependencyError:
            return None

    def save(self, out_dir, stem: str = "bench") -> Dict[str, Optional[Path]]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; returns the
        paths (``png`` is None when matplotlib is not installed, and a note says so)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        png = self.plot(out_dir / f"{stem}.png")
        if png is None and self.rows:
            self.notes.append("no plot: matplotlib is not installed (pip install 'covidedge[plots]')")
        paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "png": png}
        write_atomic(paths["json"], (self.to_json() + "\n").encode("utf-8"))
        write_atomic(paths["markdown"], self.to_markdown().encode("utf-8"))
        return paths


def probe_machine_safely() -> Dict[str, Any]:
    """covidedge.machine.probe_machine() with its probe_latency_facts(): the machine a report
    was measured on. Never raises."""
    try:
        machine = dict(probe_machine())
    except Exception as exc:  # the probe is documented never to raise; keep a report anyway
        machine = {"probe_error": f"{type(exc).__name__}: {exc}"}
    machine.update(probe_latency_facts(machine))
    return machine
