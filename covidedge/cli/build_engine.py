"""``covidedge build-engine``: a TensorRT engine (or an ONNX Runtime model) and its manifest."""

from __future__ import annotations

import json

import click

from covidedge.engine.build import INT8_ACTIVATIONS
from covidedge.spec import CALIBRATION_METHODS, ENGINE_BACKEND_CHOICES, PRECISIONS


@click.command(name="build-engine")
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--out", type=click.Path(), default=None,
              help="Engine file to write; its manifest goes to OUT.manifest.json. Default: "
                   "build/<model>.<precision><suffix>, the suffix the backend's: .trt<release>.sm<gpu>.engine "
                   "(TensorRT), .ort.onnx (ONNX Runtime), .ov.onnx (OpenVINO). "
                   "Without MODEL: the folder for the default engines (default build/).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision to export a checkpoint in (default fp32). An ONNX graph carries its "
                   "own precision; a different value is refused.")
@click.option("--calib-data", type=click.Path(exists=True), default=None,
              help="int8 from a checkpoint: a COVID-QU-Ex folder or a calibration manifest (.json).")
@click.option("--calib-count", type=click.IntRange(min=1), default=None,
              help="Calibration images to take from --calib-data when it is a folder "
                   "(default 500, or all its Train split has).")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default=None,
              help="int8 calibration method (default entropy).")
@click.option("--int8-activations", type=click.Choice(INT8_ACTIVATIONS), default="auto", show_default=True,
              help="int8 from a checkpoint: activation type. auto = signed symmetric for TensorRT, "
                   "unsigned asymmetric for ONNX Runtime CPU engines (measured faster there, see "
                   "benchmarks/).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Smallest batch the engine accepts (images).")
@click.option("--opt-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch TensorRT tunes for; recorded in the manifest as the batch to benchmark.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest batch the engine accepts (images).")
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=1), default=None,
              help="TensorRT: builder workspace limit in MiB (default: TensorRT's, the device memory).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT: timing cache file, read when present and written back (faster rebuilds).")
@click.option("--dla-core", type=click.IntRange(min=0), default=None,
              help="TensorRT on Jetson: run on this DLA core, layers DLA lacks fall back to the GPU. "
                   "fp16 / int8 only, with a fixed batch (--min-batch = --opt-batch = --max-batch).")
@click.option("--version-compatible", is_flag=True,
              help="TensorRT >= 8.6: an engine later TensorRT releases can also run (may be slower).")
@click.option("--allow-tf32", is_flag=True,
              help="TensorRT: let fp32 layers compute in TF32 (TensorRT's default; covidedge clears it).")
@click.option("--backend", type=click.Choice(ENGINE_BACKEND_CHOICES), default="auto", show_default=True,
              help="Without MODEL, or with MODEL and --backend auto given: build every candidate engine "
                   "this machine supports, keep the fastest faithful one (autotune; docs/engines.md). "
                   "With MODEL and no --backend: TensorRT where it is installed, else ONNX Runtime.")
@click.option("--budget", "budget_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Autotune: the most seconds to spend building and timing candidates (default: no bound).")
@click.option("--inference-precision", type=click.Choice(("f32", "bf16", "f16")), default=None,
              help="OpenVINO: compute precision of an fp32 graph (default f32; bf16 is faster on CPUs with "
                   "bf16 units).")
@click.option("--overwrite", is_flag=True,
              help="With MODEL: replace an existing --out file and its manifest (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the result and its manifest as JSON.")
@click.pass_context
def command(ctx, model, out, precision, calib_data, calib_count, calib_method, int8_activations, min_batch, opt_batch,
            max_batch, workspace_mib, timing_cache, dla_core, version_compatible, allow_tf32, backend, budget_s,
            inference_precision, overwrite, as_json):
    """Without MODEL, build the default engines for this machine from the models covidedge
    ships ('covidedge models') into build/, autotuned: every candidate this machine supports
    (ONNX Runtime fp32 / int8, OpenVINO fp32 / bf16 / int8 where installed, TensorRT fp16 / int8
    where installed) whose precision agreed with fp32 on Val is built, self-checked and timed
    at --opt-batch, and the fastest is kept; the table of candidates and the reason go to the
    log, the manifest and build/autotune.json. A second call reuses the choice. --budget bounds
    the time; --backend limits the candidates to one backend.

    With MODEL, build a deployable engine from MODEL - a checkpoint (.pt, exported to ONNX first) or an
    exported ONNX graph, whose precision (fp32 / fp16 / int8 Q/DQ) is in the graph - and write
    its manifest beside it: TensorRT version, GPU and compute capability (or CPU), Jetson L4T
    release, precision, ONNX and calibration sha256, batch range, I/O, labels and build options.
    Loading checks the manifest and refuses an engine built for another machine. Where TensorRT
    is not installed, 'auto' builds an ONNX Runtime model instead and says so in one line;
    TensorRT-only options are then refused rather than ignored. With MODEL and --backend auto
    given, autotune MODEL into the --out folder (default build/): its float forms (fp32, fp16,
    bf16) on every backend, the fastest kept.

    \b
    Examples:
      covidedge build-engine
      covidedge build-engine --opt-batch 8 --budget 120
      covidedge build-engine runs/cls/best.pt --backend auto --out build/
      covidedge build-engine runs/cls/best.pt --precision fp16 --max-batch 8
      covidedge build-engine runs/cls/best.pt --precision int8 --calib-data COVID-QU-Ex --calib-count 500
      covidedge build-engine build/seg-best.fp16.onnx --timing-cache build/orin.cache

    A checkpoint runs/cls/best.pt gives build/cls-best.fp16.trt10.3.sm87.engine with TensorRT 10.3
    on a Jetson Orin (sm87), build/cls-best.fp16.ort.onnx without TensorRT; an exported
    build/seg-best.fp16.onnx gives build/seg-best.fp16.trt10.3.sm87.engine.
    """
    from covidedge.engine.build import BuildOptions, build_engine

    from covidedge.engine.autotune import AutotuneOptions

    tune = AutotuneOptions(batches=(opt_batch,), max_batch=max(max_batch, opt_batch), budget_s=budget_s)
    if model is None:
        from covidedge.engine.defaults import AUTOTUNE_FLAGS

        # every other option the user gave goes to the API, which refuses them for the default engines
        given = {p.opts[0]: ctx.params[p.name] for p in ctx.command.params
                 if p.name not in ("model", "out", "as_json") and isinstance(p, click.Option)
                 and ctx.get_parameter_source(p.name).name != "DEFAULT" and p.opts[0] not in AUTOTUNE_FLAGS}
        _build_defaults(out, as_json, given, tune, backend)
        return
    if backend == "auto" and ctx.get_parameter_source("backend").name != "DEFAULT":
        from covidedge.engine.autotune import tune_model

        refused = [p.opts[0] for p in ctx.command.params
                   if p.name not in ("model", "out", "as_json", "backend", "budget_s", "opt_batch", "max_batch")
                   and isinstance(p, click.Option)
                   and ctx.get_parameter_source(p.name).name != "DEFAULT"]
        choice = tune_model(model, out, tune, progress=not as_json, refused=refused)
        if as_json:
            click.echo(json.dumps(choice.to_dict(), indent=2, sort_keys=True))
        else:
            click.echo(f"chosen  {choice.chosen.engine}  {choice.reason}")
        return
    if budget_s is not None:
        from covidedge.errors import UsageError

        raise UsageError("--budget applies to autotuning", hint="add --backend auto, or drop --budget")
    options = BuildOptions(precision=precision, backend=backend, calibration=calib_data,
                           calib_method=calib_method, calib_count=calib_count,
                           int8_activations=int8_activations, min_batch=min_batch,
                           opt_batch=opt_batch, max_batch=max_batch, workspace_mib=workspace_mib,
                           timing_cache=timing_cache, dla_core=dla_core,
                           version_compatible=version_compatible, allow_tf32=allow_tf32,
                           inference_precision=inference_precision)
    result = build_engine(model, out, options, progress=True, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    m = result.manifest
    device = m.device.get("gpu") or m.device.get("cpu") or "?"
    rows = [
        ("engine", str(result.engine_path)),
        ("manifest", str(result.manifest_path)),
        ("backend", f"{result.backend} {m.backend_version}"),
        ("precision", m.precision),
        ("task", f"{m.task} ({', '.join(m.labels)})"),
        ("batch", f"{m.min_batch}..{m.max_batch} (opt {m.opt_batch})"),
        ("device", device + (f" (compute {m.device.get('gpu_compute_capability')})"
                             if m.device.get("gpu_compute_capability") else "")),
        ("size", f"{m.engine_bytes / 1e6:.2f} MB" if m.engine_bytes >= 1e5 else f"{m.engine_bytes / 1e3:.1f} kB"),
        ("build time", f"{m.build_seconds:.1f} s"),
        ("sha256", m.engine_sha256),
    ]
    if m.l4t_release:
        rows.insert(7, ("L4T", m.l4t_release))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _build_defaults(out, as_json: bool, given, tune, backend) -> None:
    from covidedge.engine.defaults import build_default_engines
    from covidedge.engine.paths import DEFAULT_BUILD_DIR

    built = build_default_engines(out or DEFAULT_BUILD_DIR, progress=not as_json, build_options=given,
                                  autotune=tune, backend=backend)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in built], indent=2, sort_keys=True))
        return
    width = max(len(str(e.engine)) for e in built)
    for e in built:
        click.echo(f"{e.status:<7}  {str(e.engine):<{width}}  {e.task} {e.model}, {e.backend} {e.flavour}")
    click.echo("'covidedge infer IMAGE' and 'covidedge bench' now use these engines", err=True)
