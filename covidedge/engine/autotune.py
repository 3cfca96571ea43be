"""Autotuned engines: build every candidate this machine supports, keep the faithful ones, time
them against each other and keep the fastest, the way TensorRT picks kernels by timing them.

A *candidate* is one backend of the table (covidedge.backends) in one of its ``autotune_forms``
(ONNX Runtime fp32 / int8-u8 / int8-s8, OpenVINO fp32 / bf16 / int8-s8 where OpenVINO is
installed, TensorRT fp16 / int8-s8 where TensorRT is). A candidate is **faithful** when

1. its precision form is faithful to fp32 on Val: for a shipped model, the row of its Val table
   (covidedge/pretrained/models.json, ``summary.val``, key ``fp16`` / ``int8-u8`` /
   ``int8-s8``) agrees with fp32 on at least :data:`MIN_AGREEMENT` of the images (classifier) or
   changes lung and infection Dice by at most :data:`MAX_DICE_POINTS` points (segmenter); a float
   form without a row (bf16 compute) is judged by its self-check alone; for a user's model only
   the float forms (fp32, fp16, bf16) are candidates, since nothing measured the int8 graph; and
2. the engine built here passed its backend's self-check against the form's graph on ONNX
   Runtime (covidedge.engine.build).

Faithful candidates are timed with :func:`covidedge.bench.timing.time_alternating` (rounds of
each candidate in turn) at every batch size asked, and the one with the lowest time per image
(summed over the batch sizes) wins. The table of candidates (time, faithfulness, status) and the
reason for the choice go into the build log (``say``), the winner's manifest
(``build_options["autotune"]``) and :data:`RECORD_FILE` beside the engines, which a second call
reads to reuse the choice. A ``budget_s`` bounds the time spent building and timing: candidates
not reached are listed as skipped (the first faithful one is always built). Nothing here branches on a backend's name.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from covidedge import backends
from covidedge.errors import BadInputError, CovidEdgeError, MissingDependencyError, first_line
from covidedge.spec import MAX_BATCH, Options

#: The choice, with its table, beside the engines (and reused by a second call).
RECORD_FILE = "autotune.json"
RECORD_FORMAT = "covidedge-autotune/1"
#: Faithfulness of a precision form to fp32 on Val: classifier agreement (fraction of images
#: with the same top class), segmenter change of lung and of infection Dice (points).
MIN_AGREEMENT = 0.98
MAX_DICE_POINTS = 0.5
#: Forms that compute in floating point: faithful by their self-check when no Val row exists.
FLOAT_FORMS = ("fp32", "fp16", "bf16")
#: Timing: rounds of alternation and the time aimed at per candidate per round (s).
ROUNDS = 5
ROUND_SECONDS = 0.3


@dataclass(frozen=True)
class AutotuneOptions(Options):
    """How to autotune: ``batches`` (images per call) to time and choose for (the first is the
    engines' opt batch), ``max_batch`` the largest batch the engines accept, ``budget_s`` the
    most seconds to spend building and timing (None: no bound), ``rebuild`` to ignore an earlier
    choice, ``rounds`` of alternating timing."""

    batches: Tuple[int, ...] = (1,)
    max_batch: int = 8
    budget_s: Optional[float] = None
    rebuild: bool = False
    rounds: int = ROUNDS

    def validate(self) -> None:
        if not self.batches:
            raise BadInputError("no batch size to tune for", hint="pass --opt-batch N")
        for b in self.batches:
            if int(b) != b or b < 1 or b > MAX_BATCH:
                raise BadInputError(f"batch size {b!r} must be a whole number in 1..{MAX_BATCH}")
        if int(self.max_batch) < max(self.batches):
            raise BadInputError(f"--max-batch {self.max_batch} is below the batch {max(self.batches)} to tune for")
        if self.budget_s is not None and not self.budget_s > 0:
            raise BadInputError(f"budget {self.budget_s} s is not positive", hint="pass --budget SECONDS > 0")
        if int(self.rounds) < 1:
            raise BadInputError(f"rounds {self.rounds} must be >= 1")


@dataclass
class Candidate:
    """One candidate engine and what became of it. ``status``: chosen, faithful (built, checked,
    timed, slower), unfaithful (its form is not faithful on Val; not built), failed (the build
    or its self-check failed), skipped (the budget ran out)."""

    backend: str
    form: str
    engine: Optional[Path] = None
    status: str = "pending"
    faithful: Optional[bool] = None
    faithfulness: str = ""
    ms: Dict[int, float] = field(default_factory=dict)  # batch -> median ms per batch
    self_check: Dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.backend} {self.form}"

    def ms_per_image(self, batches: Sequence[int]) -> float:
        return sum(self.ms[b] / b for b in batches)

    def to_dict(self) -> Dict[str, Any]:
        return {"backend": self.backend, "form": self.form, "engine": None if self.engine is None else str(self.engine),
                "status": self.status, "faithful": self.faithful, "faithfulness": self.faithfulness,
                "ms": {str(b): round(v, 3) for b, v in self.ms.items()},
                "self_check_max_abs_diff": (self.self_check.get("max_abs_diff") or {}),
                "reason": self.reason}


@dataclass
class Choice:
    """The result for one model: its candidates, the winner and why."""

    model: str
    task: str
    batches: Tuple[int, ...]
    candidates: List[Candidate]
    chosen: Optional[Candidate]
    reason: str
    seconds: float
    status: str = "built"  # or "reused"

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "task": self.task, "batches": list(self.batches),
                "chosen": None if self.chosen is None else {"backend": self.chosen.backend, "form": self.chosen.form,
                                                            "engine": str(self.chosen.engine)},
                "reason": self.reason, "seconds": round(self.seconds, 1),
                "candidates": [c.to_dict() for c in self.candidates]}

    def table(self) -> List[str]:
        """The table of candidates, one line each, for the build log."""
        head = "  ".join([f"{'candidate':<22}", *[f"{f'ms b{b}':>9}" for b in self.batches],
                          f"{'status':<10}", "faithfulness / reason"])
        lines = [head]
        for c in self.candidates:
            times = [f"{c.ms[b]:9.2f}" if b in c.ms else f"{'-':>9}" for b in self.batches]
            why = c.faithfulness + (f"; {c.reason}" if c.reason else "")
            lines.append("  ".join([f"{c.name:<22}", *times, f"{c.status:<10}", why]))
        lines.append(f"chosen: {self.reason}")
        return lines


# -- faithfulness --------------------------------------------------------------------------
def recorded_faithfulness(task: str, val_rows: Optional[Sequence[Dict[str, Any]]], form: str,
                          graph_form: str) -> Tuple[bool, str]:
    """(faithful, why) of precision form ``form`` (built from the ``graph_form`` graph) by a
    model's recorded Val table ``val_rows`` (models.json ``summary.val``; None for a user's model
    without measurements)."""
    if graph_form == "fp32" and form == "fp32":
        return True, "fp32: the reference"
    row = next((r for r in (val_rows or []) if r.get("key") == graph_form), None)
    if graph_form == "fp32" or (row is None and form in FLOAT_FORMS):
        return True, f"{form}: float compute, no Val row; judged by its self-check"
    if row is None:
        return False, (f"{graph_form}: no Val measurement" if val_rows is None
                       else f"{graph_form}: no Val row recorded for this model")
    if task == "segmenter":
        lung, inf = row.get("delta_lung_points"), row.get("delta_infection_points")
        if lung is None or inf is None:
            return False, f"{graph_form}: its Val row has no Dice change"
        ok = abs(lung) <= MAX_DICE_POINTS and abs(inf) <= MAX_DICE_POINTS
        return ok, (f"Val Dice change lung {lung:+.2f}, infection {inf:+.2f} points "
                    f"({'within' if ok else 'beyond'} {MAX_DICE_POINTS})")
    agreement = row.get("agreement")
    if agreement is None:
        return False, f"{graph_form}: its Val row has no agreement with fp32"
    ok = agreement >= MIN_AGREEMENT
    return ok, f"Val agreement with fp32 {agreement:.1%} ({'>=' if ok else '<'} {MIN_AGREEMENT:.0%})"


def plan_candidates(present: Optional[Callable[[str], bool]] = None,
                    only: Optional[Callable[[str], bool]] = None) -> List[Tuple[Any, str]]:
    """(backend row, form) for every engine backend that can build and run here (and that
    ``only(name)`` allows), in table order."""
    from covidedge.machine import module_present

    present = present or module_present
    out = []
    for row in backends.engine_backends():
        if only is not None and not only(row.name):
            continue
        if all(present(m) for m in row.requires) and all(present(m) for m in row.build_requires):
            out += [(row, form) for form in row.autotune_forms]
    return out


# -- graphs of a shipped model ---------------------------------------------------------------
def shipped_graph(model, flavour: str, build_dir: Path, say: Callable[[str], None]) -> Path:
    """The precision-bearing ONNX graph of a shipped model for ``flavour`` (fp32, fp16,
    int8-s8: signed symmetric, TensorRT placement; int8-u8: unsigned activations), made in
    ``build_dir`` from the shipped calibration cache."""
    from covidedge.export.fp16 import convert_fp16
    from covidedge.export.int8 import quantize_int8

    fp32 = model.fp32_onnx()
    if flavour == "fp32":
        return fp32
    dst = build_dir / f"{model.name}.{flavour}.onnx"
    say(f"making the {flavour} graph of {model.name}: {dst}")
    build_dir.mkdir(parents=True, exist_ok=True)
    if flavour == "fp16":
        return convert_fp16(fp32, dst)
    cache = model.calibration_cache_path
    if cache is None or not cache.is_file():
        raise MissingDependencyError(f"shipped model {model.name} has no calibration cache", path=cache,
                                     hint="reinstall covidedge, or build int8 from a checkpoint with --calib-data")
    if flavour == "int8-s8":
        return quantize_int8(fp32, dst, None, ranges=cache, activation_type="int8",
                             symmetric_activations=True, qdq_placement="tensorrt")
    if flavour == "int8-u8":
        return quantize_int8(fp32, dst, None, ranges=cache, activation_type="uint8", symmetric_activations=False)
    raise BadInputError(f"unknown precision form {flavour!r}")


def _time_candidates(cands: List[Candidate], batches: Sequence[int], rounds: int,
                     deadline: Optional[float], say: Callable[[str], None]) -> None:
    """Median ms per batch of every candidate, alternating between them (bench.timing)."""
    from covidedge.bench.timing import sample_batch, time_alternating
    from covidedge.runtime.select import load

    runners = {}
    try:
        for c in cands:
            try:
                runners[c.name] = load(c.engine).activate()
            except CovidEdgeError as exc:
                c.status, c.reason = "failed", f"could not load: {first_line(exc)}"
        live = [c for c in cands if c.name in runners]
        for b in batches:
            if not live:
                break
            x = sample_batch(runners[live[0].name].spec, b)
            fns = {c.name: (lambda r=runners[c.name]: r.infer(x)) for c in live}
            # one call each to size the rounds: about ROUND_SECONDS per candidate per round
            t0 = time.perf_counter()
            for fn in fns.values():
                fn()
            per_call = (time.perf_counter() - t0) / len(fns)
            iterations = max(2, min(50, int(ROUND_SECONDS / max(per_call, 1e-4))))
            n_rounds = rounds
            if deadline is not None:
                left = deadline - time.perf_counter()
                n_rounds = max(1, min(rounds, int(left / max(1e-3, per_call * len(fns) * (iterations + 1)))))
            stats = time_alternating(fns, b, rounds=n_rounds, warmup=2, iterations=iterations)
            for c in live:
                c.ms[b] = stats[c.name].median_ms
            say(f"timed {len(live)} candidates at batch {b}: {n_rounds} rounds of {iterations} calls each")
    finally:
        for r in runners.values():
            r.deactivate()


def choose(cands: List[Candidate], batches: Sequence[int]) -> Tuple[Optional[Candidate], str]:
    """The fastest timed faithful candidate (lowest ms per image summed over ``batches``) and why."""
    timed = [c for c in cands if c.status == "faithful" and all(b in c.ms for b in batches)]
    if not timed:
        return None, "no faithful candidate could be built and timed"
    timed.sort(key=lambda c: c.ms_per_image(batches))
    best = timed[0]
    best.status = "chosen"
    at = ", ".join(f"{best.ms[b]:.2f} ms at batch {b}" for b in batches)
    if len(timed) == 1:
        return best, f"{best.name}: the only faithful candidate built ({at})"
    runner_up = timed[1]
    ratio = runner_up.ms_per_image(batches) / best.ms_per_image(batches)
    slowest = timed[-1]
    return best, (f"{best.name}: fastest faithful candidate ({at}); {ratio:.2f}x the next, {runner_up.name}, "
                  f"{slowest.ms_per_image(batches) / best.ms_per_image(batches):.2f}x the slowest, {slowest.name}")


def tune(name: str, task: str, graph_for: Callable[[str], Path], val_rows, engine_path: Callable[[Any, str], Path],
         options: AutotuneOptions, say: Callable[[str], None], t0: Optional[float] = None,
         present: Optional[Callable[[str], bool]] = None, only: Optional[Callable[[str], bool]] = None) -> Choice:
    """Build, check, time and choose among the candidates of one model. ``graph_for(flavour)``
    makes its precision graph; ``val_rows`` is its Val table (None: only float forms are
    faithful); ``engine_path(row, form)`` says where each candidate goes."""
    from covidedge.engine.build import BuildOptions, build_engine

    t0 = time.perf_counter() if t0 is None else t0
    deadline = None if options.budget_s is None else t0 + float(options.budget_s)
    batches = tuple(int(b) for b in options.batches)
    cands: List[Candidate] = []
    graphs: Dict[str, Path] = {}
    for row, form in plan_candidates(present, only):
        c = Candidate(row.name, form)
        cands.append(c)
        gform = row.form_graph(form)
        c.faithful, c.faithfulness = recorded_faithfulness(task, val_rows, form, gform)
        if not c.faithful:
            c.status, c.reason = "unfaithful", "not built"
            continue
        built_one = any(x.status == "faithful" for x in cands)
        if deadline is not None and time.perf_counter() > deadline and built_one:  # always one engine
            c.status, c.reason = "skipped", f"budget of {options.budget_s:g} s spent before it was built"
            continue
        out = engine_path(row, form)
        try:
            if gform not in graphs:
                graphs[gform] = graph_for(gform)
            say(f"building candidate {c.name} of {name}: {out}")
            res = build_engine(graphs[gform], out, BuildOptions(backend=row.name, min_batch=1, opt_batch=batches[0],
                                                                max_batch=int(options.max_batch),
                                                                **row.form_options(form)),
                               overwrite=True)  # its own candidate, rebuilt when its choice is stale
        except CovidEdgeError as exc:
            c.status, c.faithful = "failed", False
            c.reason = first_line(exc) + (f" ({exc.hint})" if getattr(exc, "hint", None) else "")
            continue
        c.engine = Path(res.engine_path)
        c.self_check = dict((res.manifest.build_options or {}).get("verification") or {})
        c.status = "faithful"
        c.faithfulness += "; engine matches its graph (self-check)"
    _time_candidates([c for c in cands if c.status == "faithful"], batches, int(options.rounds), deadline, say)
    chosen, reason = choose(cands, batches)
    return Choice(name, task, batches, cands, chosen, reason, time.perf_counter() - t0)


# -- the record and the winner's manifest ------------------------------------------------------
def read_choices(build_dir) -> Dict[str, Any]:
    path = Path(os.fspath(build_dir)) / RECORD_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"format": RECORD_FORMAT, "models": {}}
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT or not isinstance(doc.get("models"), dict):
        return {"format": RECORD_FORMAT, "models": {}}
    return doc


def machine_facts(machine: Dict[str, Any]) -> Dict[str, Any]:
    """What a choice depends on besides the model: the CPU / GPU and the runtimes' versions."""
    keys = ("cpu", "cpu_cores", "arch", "gpu", "gpu_compute_capability") + tuple(backends.TABLE)
    return {k: machine.get(k) for k in keys if machine.get(k) is not None}


def write_choice(build_dir, key: str, entry: Dict[str, Any]) -> Path:
    from covidedge.fileio import write_atomic

    folder = Path(os.fspath(build_dir))
    doc = read_choices(folder)
    doc["models"][key] = entry
    folder.mkdir(parents=True, exist_ok=True)
    return write_atomic(folder / RECORD_FILE, (json.dumps(doc, indent=1) + "\n").encode())


def stamp_manifest(engine: Path, choice: Choice) -> None:
    """Write the table of candidates and the reason into the winner's manifest (its integrity
    hash is recomputed: the manifest stays tamper-evident)."""
    from covidedge.formats.manifest import manifest_path_for, read_manifest

    manifest = read_manifest(engine, verify=False)
    opts = dict(manifest.build_options or {})
    opts["autotune"] = choice.to_dict()
    manifest.build_options = opts
    manifest.write(manifest_path_for(engine))


def tune_model(model, out_dir=None, options: Optional[AutotuneOptions] = None, *, progress: bool = False,
               refused: Sequence[str] = ()) -> Choice:
    """Autotune a user's model (a checkpoint, exported to fp32 first, or an fp32 ONNX graph) into
    ``out_dir`` (default build/): its float forms only (fp32, fp16, bf16 compute), since no Val
    measurement says an int8 graph of it is faithful; int8 candidates are listed as such. The
    choice is written to the winner's manifest and :data:`RECORD_FILE`; a second call with the
    same model file reuses it. ``refused`` names options a caller was given that autotuning does
    not take (a UsageError, never ignored)."""
    from covidedge.engine.paths import DEFAULT_BUILD_DIR, _strip_precision
    from covidedge.errors import UsageError
    from covidedge.fileio import sha256_file
    from covidedge.formats.checkpoint import CHECKPOINT_SUFFIXES
    from covidedge.formats.onnxfile import graph_precision, load_onnx
    from covidedge.machine import probe_machine
    from covidedge.progress import note

    if refused:
        raise UsageError(f"{', '.join(refused)} do{'es' if len(refused) == 1 else ''} not apply to autotuning "
                         "(--backend auto): it builds every candidate", hint="drop them, or pass --backend NAME")
    options = AutotuneOptions.of(options)
    say = lambda text: note(progress, text)  # noqa: E731
    model = Path(os.fspath(model))
    if not model.is_file():
        raise BadInputError("model file not found", path=model)
    folder = Path(os.fspath(out_dir)) if out_dir is not None else DEFAULT_BUILD_DIR
    if folder.exists() and not folder.is_dir():
        raise BadInputError("with --backend auto, --out names the folder for the candidate engines", path=folder,
                            hint="pass a folder, e.g. --out build/")
    stem = _strip_precision(model.name.rsplit(".", 1)[0]) or "model"
    if stem in ("best", "last", "model", "checkpoint") and model.resolve().parent.name:
        stem = f"{model.resolve().parent.name}-{stem}"
    key, sha = str(model.resolve()), sha256_file(model)
    machine = probe_machine(use_backends=any(r.probe_backends for r, _ in plan_candidates()))
    facts = machine_facts(machine)
    prev = read_choices(folder)["models"].get(key) or {}
    chosen = prev.get("chosen") or {}
    if (not options.rebuild and prev.get("sha256") == sha and prev.get("machine") == facts
            and tuple(prev.get("batches") or ()) == tuple(options.batches) and chosen.get("engine")
            and Path(chosen["engine"]).is_file()):
        from covidedge.backends import load_manifest

        try:
            load_manifest(chosen["engine"], machine)
            say(f"reusing {chosen['engine']}: chosen when built - {prev.get('reason', '')}")
            cands = [Candidate(c["backend"], c["form"], Path(c["engine"]) if c.get("engine") else None, c["status"],
                               c.get("faithful"), c.get("faithfulness", ""),
                               {int(b): v for b, v in (c.get("ms") or {}).items()}, reason=c.get("reason", ""))
                     for c in prev.get("candidates", [])]
            win = next((c for c in cands if c.status == "chosen"), None)
            return Choice(stem, prev.get("task", ""), tuple(options.batches), cands, win, prev.get("reason", ""),
                          0.0, status="reused")
        except CovidEdgeError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    onnx = model
    if model.suffix.lower() in CHECKPOINT_SUFFIXES:
        from covidedge.export import export_model

        onnx = folder / f"{stem}.fp32.src.onnx"
        say(f"exporting {model} to fp32 ONNX: {onnx}")
        export_model(model, onnx, precision="fp32", overwrite=True)  # its own intermediate, as above
    header = load_onnx(onnx, weights=False)
    if graph_precision(header) != "fp32":
        raise UsageError(f"autotuning starts from an fp32 graph or a checkpoint; this graph is "
                         f"{graph_precision(header)}", path=model,
                         hint="build it for one backend with --backend onnxruntime (or openvino, tensorrt)")
    from covidedge.spec import ModelSpec

    task = ModelSpec.from_metadata({p.key: p.value for p in header.metadata_props}, source=onnx).task

    def graph_for(flavour):
        if flavour == "fp32":
            return onnx
        if flavour == "fp16":
            from covidedge.export.fp16 import convert_fp16

            return convert_fp16(onnx, folder / f"{stem}.fp16.src.onnx")
        raise BadInputError(f"no {flavour} graph of a user's model without Val measurements")

    def engine_path(row, form):
        return folder / row.engine_name(stem, form, version=machine.get(row.name),
                                        compute_capability=machine.get("gpu_compute_capability"))

    say(f"autotuning {model} ({task}) at batch {', '.join(map(str, options.batches))}")
    choice = tune(stem, task, graph_for, None, engine_path, options, say)
    for line in choice.table():
        say(line)
    if choice.chosen is None:
        from covidedge.errors import RuntimeFailure

        raise RuntimeFailure(f"no engine of {model.name} could be built here: {choice.reason}", path=model)
    stamp_manifest(choice.chosen.engine, choice)
    write_choice(folder, key, dict(choice.to_dict(), sha256=sha, machine=facts))
    return choice


__all__ = ["AutotuneOptions", "tune_model", "Candidate", "Choice", "RECORD_FILE", "MIN_AGREEMENT", "MAX_DICE_POINTS",
           "recorded_faithfulness", "plan_candidates", "shipped_graph", "choose", "tune", "read_choices",
           "write_choice", "stamp_manifest", "machine_facts"]
