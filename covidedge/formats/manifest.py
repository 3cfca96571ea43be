"""EngineManifest: what an engine was built from and for, written next to it as JSON.

A TensorRT plan runs only on the TensorRT version and GPU it was built with (unless built
version-compatible), so an engine never travels without ``<engine>.manifest.json``. Loading
reads the manifest first, checks the engine's size and sha256 (a truncated or replaced file is
refused before TensorRT sees it); each backend (covidedge.backends) compares the build machine
with this one and says what differs together with the exact command that rebuilds the engine
here (:func:`rebuild_command`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from covidedge.errors import BadInputError, IncompatibleModelError
from covidedge.fileio import sha256_file, write_atomic
from covidedge.spec import ENGINE_BACKENDS
from covidedge.spec import ModelSpec

MANIFEST_FORMAT = "covidedge-engine-manifest-v1"
#: The manifest of ``x.engine`` is ``x.engine.manifest.json``.
MANIFEST_SUFFIX = ".manifest.json"

#: Version compatibility (BuilderFlag.VERSION_COMPATIBLE) exists from TensorRT 8.6; such an
#: engine runs on the same or a later TensorRT, never an older one. See "Version Compatibility"
#: in https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html and
#: "Engine Compatibility" in https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
VERSION_COMPATIBLE_SINCE = (8, 6)
#: Major releases a version-compatible plan may cross, (built, here): "engines built with TensorRT 8
#: work with TensorRT 9 and TensorRT 10 runtimes" (10.x "Version Compatibility"), "engines built
#: with TensorRT 10 work with TensorRT 11" (11.1 "Engine Compatibility"); nothing else, so 8 -> 11
#: is refused.
VERSION_COMPATIBLE_MAJOR_STEPS = ((8, 9), (8, 10), (9, 10), (10, 11))


# -- small helpers ---------------------------------------------------------------------------
def manifest_path_for(engine_path) -> Path:
    """``build/cls.engine`` -> ``build/cls.engine.manifest.json``."""
    return Path(os.fspath(engine_path) + MANIFEST_SUFFIX)


def engine_path_for(manifest_path) -> Path:
    """Inverse of :func:`manifest_path_for`."""
    text = os.fspath(manifest_path)
    if not text.endswith(MANIFEST_SUFFIX):
        raise BadInputError(f"is not an engine manifest (expected a name ending in {MANIFEST_SUFFIX})",
                            path=text)
    return Path(text[: -len(MANIFEST_SUFFIX)])


def parse_version(text) -> Tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); '8.6.1.post1' -> (8, 6, 1); '' / None -> ()."""
    if text is None:
        return ()
    out = []
    for part in str(text).strip().split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group(0)))
        if m.group(0) != part:
            break
    return tuple(out)


def same_release(a, b, parts: int = 3) -> bool:
    """True when two versions agree on their first ``parts`` components (build numbers aside)."""
    va, vb = parse_version(a), parse_version(b)
    pad = lambda v: (v + (0,) * parts)[:parts]  # noqa: E731
    return bool(va) and bool(vb) and pad(va) == pad(vb)


def tensorrt_version_difference(built, here, version_compatible: bool) -> Optional[str]:
    """Why a plan built with TensorRT ``built`` may not run on TensorRT ``here``, or None.

    A plain plan needs the same release down to the build number ('10.3.0.30' is not
    '10.3.0.26'); a version without a build number ('10.3.0', as some wheels report it) is
    compared on the parts both have. A version-compatible plan runs on the same or a later
    release of its major, or on a later major along :data:`VERSION_COMPATIBLE_MAJOR_STEPS`."""
    vb, vh = parse_version(built), parse_version(here)
    if not vb or not vh:
        return f"TensorRT version: engine {built}, here {here} (a version cannot be read)"
    n = max(3, min(len(vb), len(vh)))
    pad = lambda v: (v + (0,) * n)[:n]  # noqa: E731
    if not version_compatible:
        return None if pad(vb) == pad(vh) else f"TensorRT version: engine {built}, here {here}"
    later = [h for b, h in VERSION_COMPATIBLE_MAJOR_STEPS if b == vb[0]]
    runs_on = f"{built} or later {vb[0]}.x" + "".join(f", {h}.x" for h in later)
    if (vb[0] == vh[0] and pad(vh) >= pad(vb)) or vh[0] in later:
        return None
    return f"TensorRT version: engine built with {built} (version-compatible, runs on {runs_on}), here {here}"


# -- the manifest ----------------------------------------------------------------------------
@dataclass
class EngineManifest:
    """Everything needed to decide whether an engine may run here, and to rebuild it.

    ``device`` holds the build machine's accelerator facts (gpu, gpu_compute_capability,
    gpu_memory_mib, gpu_driver; cpu for ONNX Runtime artifacts); ``machine`` the full probe.
    Times are UTC ISO 8601; ``build_seconds`` is wall time in seconds."""

    backend: str
    backend_version: str
    precision: str
    spec: Dict[str, Any]
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    onnx_sha256: str
    calibration_sha256: Optional[str] = None
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    inputs: List[Dict[str, Any]] = field(default_factory=list)
    outputs: List[Dict[str, Any]] = field(default_factory=list)
    device: Dict[str, Any] = field(default_factory=dict)
    l4t_release: Optional[str] = None
    version_compatible: bool = False
    build_options: Dict[str, Any] = field(default_factory=dict)
    covidedge_version: str = ""
    built_at: str = ""
    build_seconds: float = 0.0
    machine: Dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    # -- views ----------------------------------------------------------------------------
    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec)

    @property
    def task(self) -> str:
        return self.spec.get("task", "")

    @property
    def labels(self) -> List[str]:
        return list(self.spec.get("labels", []))

    @property
    def preprocessing(self) -> str:
        return self.spec.get("preprocessing", "")

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        # Readable copies of the spec's key facts at the top level (the spec stays authoritative).
        d["task"] = self.task
        d["labels"] = self.labels
        d["preprocessing"] = self.preprocessing
        return d

    def to_json(self) -> str:
        d = self.to_dict()
        d[INTEGRITY_KEY] = integrity_hash(d)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: object = None) -> "EngineManifest":
        if not isinstance(d, dict):
            raise IncompatibleModelError("manifest is not a JSON object", path=source)
        if d.get("format") != MANIFEST_FORMAT:
            raise IncompatibleModelError(
                f"manifest format {d.get('format')!r} is not {MANIFEST_FORMAT!r}", path=source,
                hint="rebuild the engine with this covidedge version")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(k for k in required if k not in d)
        if missing:
            raise IncompatibleModelError(f"manifest lacks {', '.join(missing)}", path=source,
                                         hint="rebuild the engine with 'covidedge build-engine'")
        if not isinstance(d.get("spec"), dict):
            raise IncompatibleModelError(f"manifest spec is a {type(d.get('spec')).__name__}, expected a JSON "
                                         "object", path=source, hint="rebuild the engine with 'covidedge build-engine'")
        _check_integrity(d, source)
        m = cls(**{k: v for k, v in d.items() if k in known})
        if m.backend not in ENGINE_BACKENDS:
            raise IncompatibleModelError(f"manifest names unknown backend {m.backend!r}; expected one "
                                         f"of {', '.join(ENGINE_BACKENDS)}", path=source)
        m.model_spec  # validates the spec (raises IncompatibleModelError on an unknown task)
        return m

    @classmethod
    def from_json(cls, text: str, source: object = None) -> "EngineManifest":
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise IncompatibleModelError(f"manifest is not valid JSON ({exc})", path=source,
                                         hint="rebuild the engine with 'covidedge build-engine'") from exc
        return cls.from_dict(d, source=source)

    def write(self, path) -> Path:
        """Write the manifest atomically (a reader never sees half a file)."""
        return write_atomic(path, (self.to_json() + "\n").encode("utf-8"))

    @classmethod
    def read(cls, path) -> "EngineManifest":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IncompatibleModelError(f"cannot read manifest ({exc})", path=path) from exc
        return cls.from_json(text, source=path)


#: Key of the manifest's own sha256: a hand-edited manifest (reordered labels, another input size)
#: no longer matches it and is refused at load; a rebuild writes a new one.
INTEGRITY_KEY = "manifest_sha256"


def integrity_hash(d: Dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest dict without its own hash."""
    import hashlib

    body = {k: v for k, v in d.items() if k != INTEGRITY_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_integrity(d: Dict[str, Any], source) -> None:
    got = d.get(INTEGRITY_KEY)
    if not got:
        raise IncompatibleModelError("manifest has no manifest_sha256 (written by an older covidedge, or "
                                     "edited)", path=source, hint="rebuild the engine with 'covidedge build-engine'")
    if got != integrity_hash(d):
        raise IncompatibleModelError("manifest was edited after the build (its manifest_sha256 does not "
                                     "match its contents)", path=source,
                                     hint="rebuild the engine with 'covidedge build-engine' instead of editing it")


def check_embedded_spec(manifest: "EngineManifest", embedded: Optional[Dict[str, Any]], engine_path) -> None:
    """Refuse a manifest whose spec differs from the spec inside the engine's graph (labels,
    input size, task...): the graph's own spec is what the weights were trained for."""
    if embedded is None:
        return
    if dict(embedded) != dict(manifest.spec):
        diff = sorted(k for k in set(embedded) | set(manifest.spec) if embedded.get(k) != manifest.spec.get(k))
        raise IncompatibleModelError(f"manifest spec differs from the spec inside the engine ({', '.join(diff)})",
                                     path=engine_path, hint="rebuild the engine with 'covidedge build-engine'")


# -- the rebuild command ---------------------------------------------------------------------
def rebuild_command(manifest: EngineManifest, engine_path=None) -> str:
    """The ``covidedge build-engine`` command that rebuilds this engine on the current machine."""
    opts = manifest.build_options or {}
    model = opts.get("model") or opts.get("onnx") or "MODEL"
    out = os.fspath(engine_path) if engine_path is not None else manifest.engine_file
    args = ["covidedge", "build-engine", str(model), "--out", out]
    args += ["--precision", manifest.precision]
    if opts.get("calib_data"):
        args += ["--calib-data", str(opts["calib_data"])]
        if opts.get("calib_count"):
            args += ["--calib-count", str(opts["calib_count"])]
        if opts.get("calib_method"):
            args += ["--calib-method", str(opts["calib_method"])]
    args += ["--min-batch", str(manifest.min_batch), "--opt-batch", str(manifest.opt_batch),
             "--max-batch", str(manifest.max_batch)]
    # options only some backends take (TensorRT's) are in a manifest only when its build took them
    if opts.get("workspace_mib"):
        args += ["--workspace", str(opts["workspace_mib"])]
    if opts.get("timing_cache"):
        args += ["--timing-cache", str(opts["timing_cache"])]
    if opts.get("dla_core") is not None:
        args += ["--dla-core", str(opts["dla_core"])]
    if manifest.version_compatible:
        args.append("--version-compatible")
    if opts.get("allow_tf32"):
        args.append("--allow-tf32")
    if opts.get("inference_precision") not in (None, "f32"):  # OpenVINO's bf16 / f16 compute
        args += ["--inference-precision", str(opts["inference_precision"])]
    args += ["--backend", manifest.backend]
    return " ".join(shlex.quote(a) for a in args)


#: Engine files whose sha256 matched their manifest in this process, by (path, size, mtime,
#: sha256): a file is hashed once per process, not once per check (a changed file is hashed again).
_VERIFIED: set = set()


def verify_engine_file(engine_path, manifest: EngineManifest) -> None:
    """Refuse an engine whose size or sha256 differs from its manifest (truncated or replaced)."""
    engine_path = Path(engine_path)
    st = engine_path.stat()
    size = st.st_size
    key = (str(engine_path.resolve()), size, st.st_mtime_ns, manifest.engine_sha256)
    if key in _VERIFIED:
        return
    how = f"rebuild it with: {rebuild_command(manifest, engine_path)}"
    if manifest.engine_bytes and size != manifest.engine_bytes:
        raise IncompatibleModelError(
            f"engine is {size} bytes but its manifest says {manifest.engine_bytes}: the file is "
            "truncated or was replaced", path=engine_path, hint=how)
    digest = sha256_file(engine_path)
    if digest != manifest.engine_sha256:
        raise IncompatibleModelError(
            f"engine sha256 {digest[:12]}... does not match its manifest ({manifest.engine_sha256[:12]}...): "
            "the file was modified or replaced", path=engine_path, hint=how)
    _VERIFIED.add(key)


def read_manifest(engine_path, *, verify: bool = True) -> EngineManifest:
    """Read ``<engine>.manifest.json`` and (``verify``) check the engine file's size and sha256
    against it. A missing manifest is an error, never a silent fallback. Whether the engine may
    run on this machine is its backend's question: :func:`covidedge.backends.load_manifest`."""
    engine_path = Path(engine_path)
    if engine_path.name.endswith(MANIFEST_SUFFIX):
        engine_path = engine_path_for(engine_path)
    if not engine_path.is_file():
        raise BadInputError("engine file not found", path=engine_path)
    mpath = manifest_path_for(engine_path)
    if not mpath.is_file():
        raise IncompatibleModelError(
            f"no manifest {mpath.name} next to the engine; an engine is only loaded with the "
            "manifest it was built with", path=engine_path,
            hint=f"rebuild it with: covidedge build-engine MODEL --out {shlex.quote(str(engine_path))}")
    manifest = EngineManifest.read(mpath)
    if verify:
        verify_engine_file(engine_path, manifest)
    return manifest
