"""A Triton model repository from covidedge engines or ONNX models.

Layout (``--target cpu`` and ``--target gpu`` alike)::

    REPO/
      covidedge/        the ensemble: IMAGE (encoded bytes) -> LABEL, PROBABILITIES, masks, severity
      preprocess/       python: covidedge's decoding and preprocessing
      classifier/       the network: 1/model.onnx or 1/model.plan, with its manifest when it has one
      segmenter/
      postprocess/      python: label, masks at the image's own size, lung / infected fractions
      covidedge-repository.json   what was written, from what, for which target

``--target cpu``: the networks are python models that run covidedge's own runtime (ONNX Runtime
or OpenVINO), served by the ``tritonserver`` that ``covidedge serve`` launches. ``--target gpu``:
a TensorRT engine becomes ``platform: "tensorrt_plan"`` and an ONNX model ``backend:
"onnxruntime"``, for NVIDIA's Triton containers. ``max_batch_size`` comes from the engine manifest
(or the ONNX graph's batch axis), networks get ``dynamic_batching`` and an ``instance_group``.
Every config is checked against Triton's ModelConfig schema before anything is written, and the
repository appears at once (written beside, then renamed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from covidedge import backends
from covidedge.errors import BadInputError, IncompatibleModelError, UsageError
from covidedge.spec import MASK_THRESHOLD, Options, check_choice, check_threshold
from covidedge.serve import config as cfg
from covidedge.serve import models as names

TARGETS = ("cpu", "gpu")
ENSEMBLE = "covidedge"
REPOSITORY_FILE = "covidedge-repository.json"
REPOSITORY_FORMAT = "covidedge-triton-repository-v1"
#: Batch size for an ONNX graph with a dynamic batch axis (engines bring their own).
DEFAULT_MAX_BATCH = 8
#: How long (µs) the dynamic batcher may hold a request to form a larger batch.
DEFAULT_QUEUE_DELAY_US = 500

_MODEL_PY = '''"""Triton python-backend model written by 'covidedge triton-repo': the {step} step."""

from covidedge.serve.models import {cls} as TritonPythonModel  # noqa: F401
'''


@dataclass
class NetworkSource:
    """What a network file is, as the repository needs it."""

    task: str
    path: Path
    kind: str  # "engine" or "onnx"
    backend: str  # tensorrt | onnxruntime | openvino
    precision: str
    spec: Any
    min_batch: int
    max_batch: Optional[int]  # None: dynamic batch axis
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    manifest: Any = None

    @property
    def labels(self) -> List[str]:
        return list(self.spec.labels)


def describe_network(path, task: str, backend: Optional[str] = None) -> NetworkSource:
    """Open ``path`` (engine with manifest, or ONNX graph) without running it and check that it
    is a covidedge ``task`` model with covidedge's preprocessing."""
    from covidedge.runtime.select import classify

    p = Path(os.fspath(path))
    kind = classify(p)
    if kind == "checkpoint":
        raise IncompatibleModelError(
            "is a training checkpoint; a Triton repository serves engines and ONNX models", path=p,
            hint=f"export it first: covidedge build-engine {p}")
    if kind == "engine":
        from covidedge.formats.manifest import MANIFEST_SUFFIX, engine_path_for, read_manifest

        if p.name.endswith(MANIFEST_SUFFIX):
            p = engine_path_for(p)
        m = read_manifest(p)
        io = {d.get("name"): d.get("dtype", "float32") for d in (m.inputs or []) + (m.outputs or [])}
        spec = m.model_spec
        src = NetworkSource(task=task, path=p, kind="engine", backend=m.backend, precision=m.precision,
                            spec=spec, min_batch=int(m.min_batch), max_batch=int(m.max_batch),
                            input_dtype=io.get(spec.input_name, "float32"),
                            output_dtype=io.get(spec.output_names[1], "float32"), manifest=m)
    else:
        from covidedge.formats.onnxfile import graph_tensors, load_onnx, metadata_precision, open_onnx

        _, meta, spec = open_onnx(p)
        ins, outs = graph_tensors(load_onnx(p, weights=False))
        batch = next((d["shape"][0] for d in ins if d["name"] == spec.input_name and d["shape"]), -1)
        io = {d["name"]: d["dtype"] for d in ins + outs}
        fixed = batch if batch and batch > 0 else None
        src = NetworkSource(task=task, path=p, kind="onnx", backend=backend or backends.ONNX_RUNNER,
                            precision=metadata_precision(meta), spec=spec,
                            min_batch=fixed or 1, max_batch=fixed,
                            input_dtype=io.get(spec.input_name, "float32"),
                            output_dtype=io.get(spec.output_names[1], "float32"))
    from covidedge.backends.base import Runner
    from covidedge.runtime.pipeline import check_model_spec

    check_model_spec(Runner(src.spec, p), task)
    return src


@dataclass
class Repository:
    """A written (or planned) repository: its folder, target and each model's config dict."""

    path: Path
    target: str
    configs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    facts: Dict[str, Any] = field(default_factory=dict)
    sources: Dict[str, NetworkSource] = field(default_factory=dict, repr=False)

    @property
    def ensemble(self) -> str:
        return ENSEMBLE


def _network_config(src: NetworkSource, target: str, max_batch: int, batching: bool, queue_delay_us: int,
                    instances: int, threads: Optional[int]) -> Dict[str, Any]:
    spec = src.spec
    h, w = spec.input_size
    out_dims = [len(spec.labels)] if src.task == "classifier" else [len(spec.labels), h, w]
    c: Dict[str, Any] = {"name": src.task, "max_batch_size": max_batch,
                         "input": [cfg.tensor(spec.input_name, src.input_dtype, [spec.in_chans, h, w])],
                         "output": [cfg.tensor(spec.output_names[1], src.output_dtype, out_dims)]}
    params = {"task": src.task, "labels": json.dumps(src.labels), "precision": src.precision,
              "source": src.path.name, "runtime": src.backend}
    if target == "cpu":
        c["backend"] = "python"
        c["instance_group"] = cfg.instance_group(instances, "KIND_CPU")
        params["model_file"] = _network_file(src, target)
        if threads:
            params["threads"] = threads
    else:
        c.update(backends.get(src.backend).triton_gpu_config)
        c["default_model_filename"] = _network_file(src, target)
        c["instance_group"] = cfg.instance_group(instances, "KIND_GPU")
    c["parameters"] = cfg.parameters(params)
    if batching:
        c["dynamic_batching"] = cfg.dynamic_batching(queue_delay_us)
    return c


def _network_file(src: NetworkSource, target: str) -> str:
    return backends.get(src.backend).triton_file


@dataclass(frozen=True)
class RepositoryOptions(Options):
    """How a repository serves its networks: ``target`` cpu / gpu, ``max_batch`` images (engines
    bring their own), ``dynamic_batching`` holding a request up to ``queue_delay_us`` µs,
    ``instances`` per model, the mask ``threshold``, ``threads`` per network (cpu target) and
    ``backend``, the runtime of plain ONNX graphs on the cpu target."""

    target: str = "cpu"
    max_batch: int = DEFAULT_MAX_BATCH
    dynamic_batching: bool = True
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    threshold: float = MASK_THRESHOLD
    threads: Optional[int] = None
    backend: Optional[str] = None


def plan_repository(out, classifier=None, segmenter=None, options: Optional[RepositoryOptions] = None,
                    **overrides: Any) -> Repository:
    """Every model's config (checked against Triton's schema) for a repository at ``out``, as
    ``options`` (a :class:`RepositoryOptions`, its fields also accepted as keywords) says;
    nothing is written. With neither ``classifier`` nor ``segmenter``, the default models for
    this machine (covidedge.runtime.defaults.default_models). ``backend`` ("onnxruntime" / "openvino") picks the runtime of plain ONNX
    graphs on the cpu target; engines keep their own."""

    o = RepositoryOptions.of(options, **overrides)
    target, max_batch, dynamic_batching, queue_delay_us = o.target, o.max_batch, o.dynamic_batching, o.queue_delay_us
    instances, threshold, threads, backend = o.instances, o.threshold, o.threads, o.backend
    check_choice("target", target, TARGETS)
    if classifier is None and segmenter is None:  # the default models for this machine
        from covidedge.runtime.defaults import default_models

        chosen = default_models()
        classifier, segmenter = chosen.classifier, chosen.segmenter
    if classifier is None and segmenter is None:
        raise UsageError("no model given", hint="pass --classifier MODEL and/or --segmenter MODEL")
    for name, v in (("max_batch", max_batch), ("instances", instances)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BadInputError(f"{name}={v!r}, expected a positive integer")
    if isinstance(queue_delay_us, bool) or not isinstance(queue_delay_us, int) or queue_delay_us < 0:
        raise BadInputError(f"queue_delay_us={queue_delay_us!r}, expected microseconds >= 0")
    threshold = check_threshold(threshold)
    onnx_runners = _onnx_runners()
    if backend is not None and backend not in onnx_runners:
        raise UsageError(f"backend {backend!r} does not apply to a Triton repository",
                         hint=f"use {' or '.join(onnx_runners)} (cpu target)")
    if backend is not None and target not in backends.get(backend).triton_targets:
        raise UsageError(f"--backend {backend} applies to --target {' / '.join(backends.get(backend).triton_targets)} "
                         "only", hint="the gpu target serves ONNX graphs with Triton's onnxruntime backend")

    sources = {}
    for task, path in (("classifier", classifier), ("segmenter", segmenter)):
        if path is not None:
            sources[task] = describe_network(path, task, backend)
    for src in sources.values():
        row = backends.get(src.backend)
        if target not in row.triton_targets:
            message, hint = row.triton_refusal
            raise IncompatibleModelError(message, path=src.path, hint=hint)
        if target == "gpu" and src.min_batch > 1:
            raise IncompatibleModelError(
                f"accepts batch {src.min_batch}..{src.max_batch} only; Triton's batcher sends "
                "batches from 1", path=src.path,
                hint="rebuild with --min-batch 1 (or re-export with a dynamic batch axis)")

    batch = min((s.max_batch or max_batch) for s in sources.values())
    if target == "gpu":
        fixed = [s for s in sources.values() if s.kind == "onnx" and s.max_batch is not None]
        if fixed:
            raise IncompatibleModelError(
                f"has a fixed batch of {fixed[0].max_batch}; Triton's onnxruntime backend batches "
                "along a dynamic batch axis", path=fixed[0].path,
                hint="re-export the model with 'covidedge export' (dynamic batch)")

    repo = Repository(path=Path(os.fspath(out)), target=target)
    configs = repo.configs
    pre_params: Dict[str, Any] = {"preprocessing": next(iter(sources.values())).spec.preprocessing}
    pre_out = []
    for task, src in sources.items():
        h, w = src.spec.input_size
        pre_params[f"{task}_size"] = f"{h}x{w}"
        pre_out.append(cfg.tensor(names.NETWORK_IMAGE[task], "float32", [1, h, w]))
    pre_out.append(cfg.tensor(names.IMAGE_SIZE, "int32", [2]))
    configs["preprocess"] = {
        "name": "preprocess", "backend": "python", "max_batch_size": batch,
        "input": [cfg.tensor(names.IMAGE, "bytes", [1])], "output": pre_out,
        "instance_group": cfg.instance_group(instances, "KIND_CPU"),
        "parameters": cfg.parameters(pre_params)}
    for task, src in sources.items():
        configs[task] = _network_config(src, target, min(batch, src.max_batch or batch),
                                        dynamic_batching, queue_delay_us, instances, threads)

    post_in, post_out = [cfg.tensor(names.IMAGE_SIZE, "int32", [2])], []
    post_params: Dict[str, Any] = {}
    ens_out = [cfg.tensor(names.IMAGE_SIZE, "int32", [2])]
    if "classifier" in sources:
        k = len(sources["classifier"].labels)
        post_in.append(cfg.tensor(names.NETWORK_PROBABILITIES["classifier"], "float32", [k]))
        post_out.append(cfg.tensor(names.LABEL, "bytes", [1]))
        post_params["labels"] = json.dumps(sources["classifier"].labels)
        ens_out += [cfg.tensor(names.LABEL, "bytes", [1]), cfg.tensor(names.PROBABILITIES, "float32", [k])]
    if "segmenter" in sources:
        s = sources["segmenter"].spec
        post_in.append(cfg.tensor(names.NETWORK_PROBABILITIES["segmenter"], "float32",
                                  [len(s.labels), *s.input_size]))
        masks = [cfg.tensor(names.LUNG_MASK, "bool", [-1, -1]),
                 cfg.tensor(names.INFECTION_MASK, "bool", [-1, -1]),
                 cfg.tensor(names.LUNG_FRACTION, "float64", [1]),
                 cfg.tensor(names.INFECTED_FRACTION, "float64", [1])]
        post_out += masks
        ens_out += masks
        post_params.update(channels=json.dumps(list(s.labels)), threshold=repr(threshold))
    configs["postprocess"] = {
        "name": "postprocess", "backend": "python", "max_batch_size": batch,
        "input": post_in, "output": post_out,
        "instance_group": cfg.instance_group(instances, "KIND_CPU"),
        "parameters": cfg.parameters(post_params)}

    steps = [{"model_name": "preprocess", "model_version": -1, "input_map": {names.IMAGE: names.IMAGE},
              "output_map": {**{names.NETWORK_IMAGE[t]: names.NETWORK_IMAGE[t] for t in sources},
                             names.IMAGE_SIZE: names.IMAGE_SIZE}}]
    post_map = {names.IMAGE_SIZE: names.IMAGE_SIZE}
    for task, src in sources.items():
        prob = names.PROBABILITIES if task == "classifier" else names.NETWORK_PROBABILITIES[task]
        steps.append({"model_name": task, "model_version": -1,
                      "input_map": {src.spec.input_name: names.NETWORK_IMAGE[task]},
                      "output_map": {src.spec.output_names[1]: prob}})
        post_map[names.NETWORK_PROBABILITIES[task]] = prob
    steps.append({"model_name": "postprocess", "model_version": -1, "input_map": post_map,
                  "output_map": {t["name"]: t["name"] for t in post_out}})
    facts = {
        "format": REPOSITORY_FORMAT, "target": target, "ensemble": ENSEMBLE,
        "labels": sources["classifier"].labels if "classifier" in sources else [],
        "channels": list(sources["segmenter"].labels) if "segmenter" in sources else [],
        "threshold": threshold if "segmenter" in sources else None,
        "preprocessing": pre_params["preprocessing"],
        "models": {t: {"source": str(s.path), "backend": s.backend, "precision": s.precision,
                       "kind": s.kind, "max_batch": configs[t]["max_batch_size"],
                       "input_size": list(s.spec.input_size),
                       **_engine_facts(s)} for t, s in sources.items()},
        "dynamic_batching": bool(dynamic_batching), "queue_delay_us": queue_delay_us,
        "instances": instances,
    }
    from covidedge import __version__

    facts["covidedge_version"] = __version__
    configs[ENSEMBLE] = {
        "name": ENSEMBLE, "platform": "ensemble", "max_batch_size": batch,
        "input": [cfg.tensor(names.IMAGE, "bytes", [1])], "output": ens_out,
        "ensemble_scheduling": {"step": steps},
        "parameters": cfg.parameters({"covidedge": json.dumps(
            {k: facts[k] for k in ("labels", "channels", "threshold", "preprocessing", "models", "target")})})}
    for c in configs.values():
        cfg.to_message(c, source=repo.path)  # refuses what Triton's schema refuses
    repo.facts = facts
    repo.sources = sources
    return repo


def _engine_facts(src: NetworkSource) -> Dict[str, Any]:
    m = src.manifest
    if m is None:
        return {}
    out = {"backend_version": m.backend_version}
    if "gpu" in backends.get(m.backend).targets:  # tied to the GPU and runtime it was built for
        out.update({m.backend: m.backend_version, "version_compatible": bool(m.version_compatible),
                    "l4t_release": m.l4t_release, "gpu": (m.device or {}).get("gpu"),
                    "gpu_compute_capability": (m.device or {}).get("gpu_compute_capability")})
    return out


def _onnx_runners() -> List[str]:
    """Backends that run a plain ONNX graph on the cpu target (``--backend``)."""
    return [b.name for b in backends.engine_backends() if b.embeds_spec and "cpu" in b.triton_targets]


def write_repository(out, classifier=None, segmenter=None, **options) -> Repository:
    """Plan (see :func:`plan_repository`) and write the repository at ``out``, which must not
    exist yet or be an empty folder. Network files are copied with their manifests."""
    repo = plan_repository(out, classifier, segmenter, **options)
    dest = repo.path
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInputError("exists and is not an empty folder; a repository is never written over "
                            "other files", path=dest, hint="choose a new --out folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        from covidedge.formats.manifest import manifest_path_for

        for name, c in repo.configs.items():
            folder = tmp / name
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(cfg.to_pbtxt(c), encoding="utf-8")
            cls = {"preprocess": "PreprocessModel", "postprocess": "PostprocessModel"}.get(name)
            src = repo.sources.get(name)
            if src is not None:
                target_file = folder / "1" / _network_file(src, repo.target)
                shutil.copyfile(src.path, target_file)
                if src.manifest is not None:
                    shutil.copyfile(manifest_path_for(src.path), manifest_path_for(target_file))
                if repo.target == "cpu":
                    cls = "NetworkModel"
            if cls is not None:
                (folder / "1" / "model.py").write_text(_MODEL_PY.format(step=name, cls=cls), encoding="utf-8")
        (tmp / REPOSITORY_FILE).write_text(json.dumps(repo.facts, indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo


def read_repository(path) -> Dict[str, Any]:
    """The facts file of a repository written by covidedge; BadInputError when ``path`` is not one."""
    p = Path(os.fspath(path))
    f = p / REPOSITORY_FILE
    if not p.is_dir():
        raise BadInputError("is not a folder", path=p, hint="pass a repository written by 'covidedge triton-repo'")
    if not f.is_file():
        raise BadInputError(f"has no {REPOSITORY_FILE}; it was not written by 'covidedge triton-repo'",
                            path=p, hint="write one with: covidedge triton-repo --classifier MODEL --out REPO")
    try:
        facts = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot be read ({exc})", path=f) from exc
    if not isinstance(facts, dict) or facts.get("format") != REPOSITORY_FORMAT:
        raise BadInputError(f"is not a {REPOSITORY_FORMAT} file", path=f,
                            hint="rewrite the repository with this covidedge version")
    return facts


__all__ = ["TARGETS", "ENSEMBLE", "REPOSITORY_FILE", "DEFAULT_MAX_BATCH", "DEFAULT_QUEUE_DELAY_US",
           "NetworkSource", "Repository", "RepositoryOptions", "describe_network", "plan_repository", "write_repository",
           "read_repository"]
