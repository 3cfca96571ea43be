"""Send X-rays to a Triton server that serves a covidedge repository.

:class:`ServerClient` is a small wrapper over tritonclient's HTTP and gRPC clients (picked by
the URL's scheme) that turns their errors into covidedge's. :class:`ServerPipeline` answers
like :class:`covidedge.runtime.pipeline.Pipeline`: each image file goes to the server's
ensemble as encoded bytes, and the class, probabilities, masks and severity come back as a
:class:`~covidedge.runtime.results.Prediction` (or a :class:`~covidedge.runtime.results.Failure`
for a bad file, while the others go on). ``covidedge infer --server URL`` uses it, so a run
prints and writes what a local run does; ``timings_ms`` holds the round trip ("total").
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np

from covidedge.errors import (EXIT_BAD_INPUT, EXIT_RUNTIME, BadInputError, CovidEdgeError,
                              IncompatibleModelError, RuntimeFailure, require)
from covidedge.prediction import Failure, OutputNamer, Prediction, Result, source_name
from covidedge.serve import models as names
from covidedge.serve.config import SERVE_EXTRA
from covidedge.serve.repository import ENSEMBLE

SCHEMES = ("http", "grpc")
_ENSEMBLE_PREFIX = re.compile(r"^(in ensemble '[^']*', )+")


def redact_url(url: str) -> str:
    """``url`` safe to print or log: a ``user:password@`` in it becomes ``***@``."""
    p = urlparse(str(url))
    if "@" not in (p.netloc or ""):
        return str(url)
    return p._replace(netloc="***@" + p.netloc.rpartition("@")[2]).geturl()


def parse_url(url: str) -> Tuple[str, str]:
    """``http://host:8000`` / ``grpc://host:8001`` -> (scheme, "host:port"), without any
    ``user:password@`` (see :func:`url_credentials`); BadInputError otherwise."""
    p = urlparse(str(url))
    if p.scheme not in SCHEMES or not p.netloc or p.path not in ("", "/"):
        raise BadInputError(f"server URL {redact_url(url)!r} is not http://HOST:PORT or grpc://HOST:PORT",
                            hint="e.g. --server http://127.0.0.1:8000 or --server grpc://127.0.0.1:8001")
    return p.scheme, p.netloc.rpartition("@")[2]


def url_credentials(url: str) -> Optional[Tuple[str, str]]:
    """``(user, password)`` of ``http://user:password@host:port``, or None."""
    p = urlparse(str(url))
    if "@" not in (p.netloc or ""):
        return None
    from urllib.parse import unquote

    return unquote(p.username or ""), unquote(p.password or "")


class ServerError(CovidEdgeError):
    """The server refused or failed one request; ``exit_code`` follows its status."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME, status: str = ""):
        self.exit_code = exit_code
        self.status = status
        super().__init__(message)


class ServerUnanswered(RuntimeFailure):
    """The server did not answer a request: no connection, or no reply within the timeout."""


#: Statuses of a request the server did not answer (gRPC); HTTP gives exceptions of the socket.
_UNANSWERED_STATUSES = ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE")
#: Requests in a row left unanswered after which a run stops instead of waiting on every image.
STOP_AFTER_UNANSWERED = 2


class ServerClient:
    """A Triton server at ``url``; requests time out after ``timeout_s`` seconds. A
    ``user:password@`` in the URL is sent as HTTP basic authentication (for a proxy in front of
    the server) and never printed: ``url`` is the redacted form."""

    def __init__(self, url: str, timeout_s: float = 60.0):
        self.url = redact_url(str(url).rstrip("/"))
        self.scheme, self.address = parse_url(url)
        self._credentials = url_credentials(url)
        self.module = require(f"tritonclient.{self.scheme}", extra=SERVE_EXTRA,
                              purpose=f"talking to a Triton server over {self.scheme}")
        self.utils = require("tritonclient.utils", extra=SERVE_EXTRA)
        timeout_s = float(timeout_s)
        if not timeout_s > 0:
            raise BadInputError(f"server timeout {timeout_s} s; expected a positive number of seconds",
                                hint="e.g. --timeout 30")
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: List[Any] = []
        self._lock = threading.Lock()

    @property
    def _client(self):
        """This thread's tritonclient client: the HTTP one runs on gevent and must not be shared
        between threads; gRPC's is thread-safe, one is made per thread all the same."""
        c = getattr(self._local, "client", None)
        if c is None:
            if self.scheme == "http":
                c = self.module.InferenceServerClient(self.address, connection_timeout=self.timeout_s,
                                                      network_timeout=self.timeout_s)
            else:
                c = self.module.InferenceServerClient(self.address)
            if self._credentials is not None:
                from tritonclient._auth import BasicAuth

                c.register_plugin(BasicAuth(*self._credentials))
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    # -- errors ------------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str) -> CovidEdgeError:
        if isinstance(exc, self.utils.InferenceServerException):
            status = str(exc.status() or "")
            text = _ENSEMBLE_PREFIX.sub("", " ".join(str(exc.message() or exc).split()))
            bad = status in ("400", "StatusCode.INVALID_ARGUMENT")
            if status in _UNANSWERED_STATUSES:
                return ServerUnanswered(f"{what}: no answer from {self.url} within {self.timeout_s:g} s "
                                        f"({status})", hint="is the server running and answering?")
            return ServerError(text, EXIT_BAD_INPUT if bad else EXIT_RUNTIME, status)
        detail = str(exc)  # the address it names holds no credentials (parse_url drops them)
        if isinstance(exc, (TimeoutError, OSError)) or "timeout" in type(exc).__name__.lower():
            return ServerUnanswered(f"{what}: no answer from {self.url} within {self.timeout_s:g} s "
                                    f"({type(exc).__name__}: {detail or 'timed out'})",
                                    hint="is the server running and answering? --timeout sets the wait")
        return RuntimeFailure(f"{what} failed at {self.url}: {type(exc).__name__}: {detail}",
                              hint="is the server running? start it with 'covidedge serve REPO'")

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as exc:
            raise self._error(exc, what) from exc

    # -- server facts ------------------------------------------------------------------------
    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def model_config(self, model: str) -> Dict[str, Any]:
        if self.scheme == "http":
            return self._call("reading the model config", self._client.get_model_config, model)
        return self._call("reading the model config", self._client.get_model_config, model,
                          as_json=True)["config"]

    def statistics(self, model: str = "") -> List[Dict[str, Any]]:
        """Per-model inference statistics (counts, batch sizes), as Triton reports them."""
        if self.scheme == "http":
            stats = self._call("reading statistics", self._client.get_inference_statistics, model)
        else:
            stats = self._call("reading statistics", self._client.get_inference_statistics, model,
                               as_json=True)
        return stats.get("model_stats", [])

    # -- inference ---------------------------------------------------------------------------
    def infer(self, model: str, inputs: Dict[str, np.ndarray], outputs: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """``{name: array}`` in, ``{name: array}`` out (the given outputs, or all)."""
        m, u = self.module, self.utils
        req = []
        for name, value in inputs.items():
            arr = np.asarray(value)
            t = m.InferInput(name, list(arr.shape), u.np_to_triton_dtype(arr.dtype))
            if self.scheme == "http":
                t.set_data_from_numpy(arr, binary_data=True)
            else:
                t.set_data_from_numpy(arr)
            req.append(t)
        kw: Dict[str, Any] = {}
        if outputs:
            kw["outputs"] = [m.InferRequestedOutput(o, binary_data=True) if self.scheme == "http"
                             else m.InferRequestedOutput(o) for o in outputs]
        if self.scheme == "grpc":
            kw["client_timeout"] = self.timeout_s
        result = self._call(f"inference on '{model}'", self._client.infer, model, req, **kw)
        names_out = list(outputs) or [o["name"] for o in (result.get_response(as_json=True)
                                                          if self.scheme == "grpc" else result.get_response())["outputs"]]
        return {n: result.as_numpy(n) for n in names_out}

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self) -> "ServerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteModel:
    """What the CLI shows about a network the server runs (its backend line)."""

    def __init__(self, task: str, facts: Dict[str, Any], url: str):
        self.task = task
        self.facts = facts
        self.url = url
        self.source = Path(str(facts.get("source", task))).name
        self.backend = f"triton {facts.get('backend', '')}".strip()
        self.precision = facts.get("precision", "")

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.url,
                "source": self.source, "task": self.task}


class _Segmentation:
    """Stands in for a local Segmenter where only the threshold matters."""

    def __init__(self, threshold: float):
        self.threshold = threshold


class ServerPipeline:
    """Images in, :class:`Prediction` / :class:`Failure` out, computed by a Triton server that
    serves a covidedge repository. The mask threshold is the repository's; a ``threshold`` given
    here must equal it. ``batch_size`` requests are in flight at once, so the server's dynamic
    batcher can group them."""

    def __init__(self, url: str, threshold: Optional[float] = None, batch_size: int = 8,
                 model: str = ENSEMBLE, timeout_s: float = 60.0):
        self.url = redact_url(str(url).rstrip("/"))
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.client = ServerClient(url, timeout_s=timeout_s)
        self._unanswered = 0  # requests in a row the server left unanswered
        self._count_lock = threading.Lock()
        if not self.client.is_ready():
            raise RuntimeFailure(f"no ready Triton server at {self.url}",
                                 hint="start one with 'covidedge serve REPO', or check the URL and port")
        cfg = self.client.model_config(model)
        text = ((cfg.get("parameters") or {}).get("covidedge") or {}).get("string_value")
        if not text:
            raise IncompatibleModelError(f"model '{model}' at {self.url} is not a covidedge ensemble",
                                         hint="serve a repository written by 'covidedge triton-repo'")
        self.facts = json.loads(text)
        self._labels = tuple(self.facts.get("labels") or ())
        served = self.facts.get("threshold")
        if threshold is not None and served is not None and abs(float(threshold) - float(served)) > 1e-12:
            raise BadInputError(f"the server applies mask threshold {served}, not {threshold}",
                                hint=f"drop --threshold, or write the repository with --threshold {threshold}")
        models = self.facts.get("models") or {}
        self.models = [RemoteModel(t, models[t], self.url) for t in ("classifier", "segmenter") if t in models]
        self.classifier = next((m for m in self.models if m.task == "classifier"), None)
        self.segmenter = _Segmentation(float(served)) if "segmenter" in models else None

    @property
    def labels(self) -> Tuple[str, ...]:
        return self._labels

    @property
    def threshold(self) -> Optional[float]:
        return self.segmenter.threshold if self.segmenter is not None else None

    def describe(self) -> Dict[str, Any]:
        return {m.task: m.describe() for m in self.models}

    # -- life cycle (the server holds the models) ---------------------------------------------
    def activate(self) -> "ServerPipeline":
        return self

    def deactivate(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "ServerPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one image ---------------------------------------------------------------------------
    def _outputs(self) -> List[str]:
        out = [names.IMAGE_SIZE]
        if self._labels:
            out += [names.LABEL, names.PROBABILITIES]
        if self.segmenter is not None:
            out += [names.LUNG_MASK, names.INFECTION_MASK, names.LUNG_FRACTION, names.INFECTED_FRACTION]
        return out

    def _request(self, data: bytes, source: str) -> Prediction:
        t0 = time.perf_counter()
        out = self.client.infer(self.model, {names.IMAGE: np.array([[data]], dtype=object)}, self._outputs())
        ms = (time.perf_counter() - t0) * 1e3
        h, w = (int(v) for v in out[names.IMAGE_SIZE].reshape(-1)[:2])
        pred = Prediction(source=source, image_size=(h, w))
        if self._labels:
            p = np.asarray(out[names.PROBABILITIES], dtype=np.float64).reshape(-1)
            pred.probabilities = {lab: float(v) for lab, v in zip(self._labels, p)}
            label = out[names.LABEL].reshape(-1)[0]
            pred.label = label.decode() if isinstance(label, bytes) else str(label)
        if self.segmenter is not None:
            pred.lung_mask = np.asarray(out[names.LUNG_MASK][0], dtype=bool)
            pred.infection_mask = np.asarray(out[names.INFECTION_MASK][0], dtype=bool)
            pred.lung_fraction = float(out[names.LUNG_FRACTION].reshape(-1)[0])
            pred.infected_fraction = float(out[names.INFECTED_FRACTION].reshape(-1)[0])
        pred.timings_ms = {"total": ms}
        return pred

    def _one(self, item, source: str, out_dir, name: Optional[str], overlay: bool) -> Result:
        stage = "read"
        try:
            data = _read_bytes(item, source)
            stage = "server"
            pred = self._request(data, source)
            with self._count_lock:
                self._unanswered = 0  # the server answers
            image = None
            if not isinstance(item, (bytes, bytearray)):
                # the input quality check runs here, as in a local run (the server does not run it)
                from covidedge.data.preprocess import as_gray
                from covidedge.data.quality import check_quality

                stage = "quality"
                image = as_gray(item)
                pred.quality_flags = check_quality(image)
            if out_dir is not None:
                stage = "save"
                pred.save(out_dir, name, image=image if overlay and pred.lung_mask is not None else None,
                          overlay=overlay)
            return pred
        except Exception as exc:
            if stage == "server":
                with self._count_lock:
                    self._unanswered = self._unanswered + 1 if isinstance(exc, ServerUnanswered) else 0
            return Failure.from_exception(exc, source, stage)

    def predict(self, image_or_path, *, out_dir=None, overlay: bool = True) -> Prediction:
        """One image file (path or encoded bytes) -> Prediction; raises for a bad image."""
        source = source_name(image_or_path, 0)
        res = self._one(image_or_path, source, out_dir, OutputNamer()(source) if out_dir else None, overlay)
        if isinstance(res, Failure):
            raise ServerError(res.error, res.exit_code)
        return res

    def predict_many(self, items: Iterable[Any], batch_size: Optional[int] = None, *, out_dir=None,
                     overlay: bool = True) -> Iterator[Result]:
        """One result per item, in order, with ``batch_size`` requests in flight. When the server
        leaves :data:`STOP_AFTER_UNANSWERED` requests in a row unanswered (each waits at most the
        timeout), the rest is not sent: ServerUnanswered says how many images were done, so a
        stalled server costs one timeout, not one per remaining image."""
        n = self.batch_size if batch_size is None else max(1, int(batch_size))
        namer = OutputNamer() if out_dir is not None else None
        items = list(items)
        done, answered = [0], [0]

        def results(window):
            for f in window:
                res = f.result()
                yield res
                done[0] += 1
                answered[0] += bool(res.ok)
            if self._unanswered >= STOP_AFTER_UNANSWERED:
                raise ServerUnanswered(
                    f"the server at {self.url} stopped answering (no answer within "
                    f"{self.client.timeout_s:g} s to {self._unanswered} requests in a row); stopped after "
                    f"{done[0]} of {len(items)} images, {answered[0]} of them answered (their results "
                    "are complete)", hint="check the server, then run the remaining images again")

        with ThreadPoolExecutor(max_workers=n) as pool:
            window = []
            for i, item in enumerate(items):
                source = source_name(item, i)
                name = namer(source) if namer else None
                window.append(pool.submit(self._one, item, source, out_dir, name, overlay))
                if len(window) == n:
                    yield from results(window)
                    window = []
            yield from results(window)


def _read_bytes(item, source: str) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if not isinstance(item, (str, os.PathLike)):
        raise BadInputError(f"cannot send a {type(item).__name__} to the server", path=source,
                            hint="pass an image file or its encoded bytes")
    from covidedge.data.checks import check_file  # the local reader's own checks and messages

    p = Path(os.fspath(item))
    check_file(p)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot be read: {exc.strerror or exc}", path=p,
                            hint="check the file's permissions") from exc


def server_pipeline(url: str, threshold: Optional[float] = None, batch_size: int = 8,
                    timeout_s: float = 60.0) -> ServerPipeline:
    """A :class:`ServerPipeline` for ``url`` (what ``covidedge infer --server`` runs); each
    request waits at most ``timeout_s`` seconds."""
    return ServerPipeline(url, threshold=threshold, batch_size=batch_size, timeout_s=timeout_s)


__all__ = ["SCHEMES", "parse_url", "redact_url", "url_credentials", "ServerError", "ServerUnanswered",
           "ServerClient", "ServerPipeline", "RemoteModel", "server_pipeline", "STOP_AFTER_UNANSWERED"]
