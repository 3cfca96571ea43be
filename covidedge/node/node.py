"""The DICOM node: a Storage and Verification SCP that runs every received X-ray through the
models and sends the SEG, SR and Secondary Capture back by C-STORE (or to a folder).

Built on pynetdicom (the ``dicom`` extra); no DICOM networking of its own. What happens to an
instance:

1. **Receive.** A caller whose AE title (``allow_ae``) and host (``allow_hosts``; with neither,
   loopback only) are allowed sends it by C-STORE. It is written (fsync'd) into the work
   folder's inbox before the response says success. A SOP instance the node knows already is
   acknowledged and not processed again; a full queue (``max_queue``) or a disk below
   ``min_free_mb`` is answered 0xA700 (out of resources), so the sender keeps it.
2. **Infer.** A worker (``workers``, one Pipeline each) takes up to ``batch_size`` waiting
   instances and runs them through :func:`covidedge.runtime.run.run_inference` with the same
   series selection (:func:`covidedge.dicom.select_instances`) and DICOM writers as
   ``covidedge infer --dicom-out``. Objects made by covidedge itself are never run again.
3. **Deliver.** The objects wait in the work folder for each destination and are retried with
   exponential backoff while it is down. A restart resumes from the folder
   (:mod:`covidedge.node.work`).

Every step logs one line per instance through ``on_log``, naming it by its SOP Instance UID,
never by patient.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from covidedge.dicom import select_instances
from covidedge.errors import BadInputError, CovidEdgeError, one_line, require
from covidedge.node.options import (  # noqa: F401  (re-exported: the node's public names)
    ACCEPT_CHOICES, DEFAULT_AE_TITLE, DEFAULT_PORT, NOT_AUTHORIZED, OUT_OF_RESOURCES,
    SECONDARY_CAPTURE, XRAY_SOP_CLASSES, NodeOptions, _is_loopback, _split, transfer_syntaxes)
from covidedge.node.work import FAILED, NOT_SELECTED, WorkFolder, uid_key

def _quiet(_: str) -> None:
    pass


def _describe(record: Dict[str, Any]) -> str:
    """The outcome of an instance for its log line: class, probability, severity."""
    parts = []
    if record.get("label"):
        p = (record.get("probabilities") or {}).get(record["label"])
        parts.append(f"{record['label']}" + (f" {p:.2f}" if p is not None else ""))
    if record.get("infected_fraction") is not None:
        parts.append(f"infected {100 * record['infected_fraction']:.1f}% of lungs")
    return ", ".join(parts) or "done"


class DicomNode:
    """The node (see the module). ``start()`` loads the models, resumes the work folder and
    listens; ``stop()`` stops listening, lets what is in flight finish (up to
    ``stop_timeout_s``) and leaves the rest journalled in the work folder; ``run()`` does both
    around SIGTERM / Ctrl-C. Also a context manager."""

    def __init__(self, options: NodeOptions, on_log: Callable[[str], Any] = _quiet):
        self.options = options
        self.log = on_log
        self.work = WorkFolder(options.work)
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self._queued = 0
        self._wake = {d.key: threading.Event() for d in options.destinations}
        self._threads: List[threading.Thread] = []
        self._pipes: List[Any] = []
        self._server = None
        self._lock = None
        self.port: Optional[int] = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> "DicomNode":
        from covidedge.runtime.results import OutputLock

        o = self.options
        require("pynetdicom", extra="dicom", purpose="the DICOM node")
        from covidedge.dicom import require_highdicom

        require_highdicom()
        ssl_context = o.ssl_context()
        self.work.create()
        self._lock = OutputLock(o.work).acquire()  # one node per work folder
        try:
            self._make_pipelines()
            waiting = self.work.recover()
            self._queued = self.work.queued()
            for key in waiting:
                self._queue.put(key)
            if waiting or self._queued:
                self.log(f"resuming {o.work}: {len(waiting)} waiting for inference, "
                         f"{self._queued - len(waiting)} waiting for delivery")
            for d in o.destinations:
                self._spawn(self._sender, d, name=f"covidedge-send-{d.key}")
            for i, pipe in enumerate(self._pipes):
                self._spawn(self._worker, pipe, name=f"covidedge-worker-{i}")
            self._listen(ssl_context)
        except BaseException:
            self.stop()
            raise
        return self

    def _make_pipelines(self) -> None:
        from covidedge.runtime.pipeline import Pipeline

        o = self.options
        classifier, segmenter = o.classifier, o.segmenter
        if classifier is None and segmenter is None:
            from covidedge.runtime.defaults import default_models

            chosen = default_models()
            self.log(chosen.line)
            classifier, segmenter = chosen.classifier, chosen.segmenter
        for _ in range(o.workers):
            pipe = Pipeline(classifier=classifier, segmenter=segmenter, threshold=o.threshold,
                            batch_size=o.batch_size, backend=o.backend)
            self._pipes.append(pipe.activate())
        d = self._pipes[0].describe()
        self.log("models: " + "; ".join(f"{task} {Path(str(v.get('source', ''))).name} ({v.get('backend')} "
                                        f"{v.get('precision')})" for task, v in d.items())
                 + f"; {o.workers} worker{'s' if o.workers != 1 else ''}")

    def _spawn(self, target, *args, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _listen(self, ssl_context) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        o = self.options
        ae = AE(ae_title=o.ae_title)
        ae.maximum_pdu_size = 0  # no limit on what a caller may send per PDU: fewer, larger reads
        ae.require_called_aet = True
        if o.allow_ae:
            ae.require_calling_aet = list(o.allow_ae)
        syntaxes = transfer_syntaxes()
        classes = list(XRAY_SOP_CLASSES) + ([SECONDARY_CAPTURE] if o.accept == "xray+sc" else [])
        if o.accept == "any":
            classes = [c.abstract_syntax for c in AllStoragePresentationContexts]
        for sop_class in classes:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        try:
            server = ae.start_server((o.host, o.port), block=False, evt_handlers=handlers,
                                     ssl_context=ssl_context)
        except OSError as exc:
            raise BadInputError(f"{o.host}:{o.port}: cannot listen: {exc.strerror or exc}",
                                hint="choose another --port or --host (ports below 1024 need root)") from exc
        server.verify_request = self._verify_peer  # hosts are checked before any DICOM is read
        self._server = server
        self.port = server.server_address[1]
        who = (f"calling AE titles {','.join(o.allow_ae)}" if o.allow_ae else "any calling AE title")
        hosts = (f"hosts {','.join(o.allow_hosts)}" if o.allow_hosts else
                 "any host" if o.allow_ae else "loopback only")
        tls = ", TLS" + (" with client certificates" if o.tls_ca else "") if ssl_context else ""
        self.log(f"listening on {o.host}:{self.port} as {o.ae_title} ({who}, {hosts}{tls}); results to "
                 + ", ".join(d.label for d in o.destinations))

    def stop(self) -> None:
        """Stop listening, let in-flight work finish (up to ``stop_timeout_s``), release the folder."""
        if self._stop.is_set() and self._server is None and self._lock is None:
            return
        self._stop.set()
        deadline = time.monotonic() + float(self.options.stop_timeout_s)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # no new associations; those open may finish their C-STOREs
            drain_until = min(deadline, time.monotonic() + 2.0)
            while server.active_associations and time.monotonic() < drain_until:
                time.sleep(0.05)
            for assoc in server.active_associations:
                assoc.abort()  # an instance not yet acknowledged is sent again by its caller
        for _ in self._pipes:
            self._queue.put(None)
        for event in self._wake.values():
            event.set()
        busy = []
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                busy.append(t.name)
        if not busy:
            for pipe in self._pipes:
                pipe.deactivate()
        self._pipes, self._threads = [], []
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            status = self.work.status()
            self.log(f"stopped: {status['waiting_for_inference']} waiting for inference, "
                     f"{status['waiting_for_delivery']} waiting for delivery in {self.options.work}"
                     + (f" (still busy: {', '.join(busy)}; the work folder keeps their instances)"
                        if busy else ""))

    def run(self) -> None:
        """Start, serve until SIGTERM or Ctrl-C (SIGINT), stop cleanly."""
        import signal

        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {}
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            for sig in handled:
                previous[sig] = signal.signal(sig, lambda s, f: self._stop.set())
        try:
            self.start()
            while not self._stop.wait(0.5):
                pass
            self.log("stopping (signal received)")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> "DicomNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the SCP ----------------------------------------------------------------------------
    def _verify_peer(self, request, client_address) -> bool:
        host = str(client_address[0])
        if self.options.host_allowed(host):
            return True
        rule = "--allow-host" if self.options.allow_hosts else "loopback only without --allow / --allow-host"
        self.log(f"refused connection from {host}: host not allowed ({rule})")
        return False

    @staticmethod
    def _peer(event) -> str:
        r = event.assoc.requestor
        return f"{str(r.ae_title).strip()}@{r.address}"

    def _refused_host(self, event) -> bool:
        """The host check again, per request: a connection accepted in the instant between the
        server's start and its host check being installed is still refused here."""
        return not self.options.host_allowed(str(event.assoc.requestor.address))

    def _on_echo(self, event) -> int:
        if self._refused_host(event):
            return NOT_AUTHORIZED
        self.log(f"echo from {self._peer(event)}")
        return 0x0000

    def _on_rejected(self, event) -> None:
        if event.assoc.is_acceptor:
            self.log(f"refused association from {self._peer(event)}: calling AE title not in --allow, "
                     f"or called AE title not {self.options.ae_title}")

    def _on_store(self, event) -> int:
        t0 = time.perf_counter()
        o = self.options
        uid = str(event.request.AffectedSOPInstanceUID or "")
        key = uid_key(uid)
        peer = self._peer(event)  # while stopping, an association still open may finish: it is journalled
        if self._refused_host(event):
            self.log(f"refused {key} from {peer}: host not allowed")
            return NOT_AUTHORIZED
        known = self.work.reserve(key)
        if known is not None:
            self.log(f"duplicate {key} from {peer}: {known}; acknowledged, not processed again")
            return 0x0000
        try:
            with self._count_lock:
                full = self._queued >= o.max_queue
            if full:
                self.log(f"refused {key} from {peer}: queue full ({o.max_queue} instances, --max-queue); "
                         "answered out of resources")
                return OUT_OF_RESOURCES
            data = event.encoded_dataset(include_meta=True)
            free = shutil.disk_usage(self.work.path).free - len(data)
            if free < o.min_free_mb * 2 ** 20:
                self.log(f"refused {key} from {peer}: {free / 2 ** 20:.0f} MiB free in {o.work}, below "
                         f"--min-free-mb {o.min_free_mb:g}; answered out of resources")
                return OUT_OF_RESOURCES
            meta = {"uid": uid, "calling_ae": str(event.assoc.requestor.ae_title).strip(),
                    "peer": str(event.assoc.requestor.address), "received": time.time(),
                    "sop_class": str(event.request.AffectedSOPClassUID or ""), "bytes": len(data)}
            self.work.store(key, data, meta)
        except OSError as exc:
            self.log(f"refused {key} from {peer}: cannot be written to {o.work}: {exc.strerror or exc}; "
                     "answered out of resources")
            return OUT_OF_RESOURCES
        finally:
            self.work.release(key)
        with self._count_lock:
            self._queued += 1
        self._queue.put(key)
        self.log(f"received {key} from {peer} ({len(data) / 1024:.0f} KiB) in "
                 f"{1000 * (time.perf_counter() - t0):.0f} ms")
        return 0x0000

    # -- inference ----------------------------------------------------------------------------
    def _worker(self, pipe) -> None:
        while not self._stop.is_set():
            key = self._queue.get()
            if key is None or self._stop.is_set():
                break
            batch = [key]
            while len(batch) < self.options.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                self._process(pipe, batch)
            except Exception as exc:  # the node goes on; the instances stay in the inbox
                self.log(f"error: {len(batch)} instance(s) left in {self.work.inbox} after "
                         f"{one_line(exc)}; a restart runs them again")

    def _process(self, pipe, keys: List[str]) -> None:
        from covidedge.dicom.writers import MANUFACTURER, read_source
        from covidedge.runtime.options import InferenceOptions
        from covidedge.runtime.run import run_inference

        o = self.options
        t0 = time.perf_counter()
        paths = {k: self.work.inbox_path(k) for k in keys if self.work.inbox_path(k).exists()}
        by_path = {str(p): k for k, p in paths.items()}
        records: Dict[str, Dict[str, Any]] = {}
        for k, p in paths.items():
            meta = self.work.inbox_meta(k)
            records[k] = {"uid": meta.get("uid", k), "calling_ae": meta.get("calling_ae"),
                          "received": meta.get("received"), "sop_class": meta.get("sop_class")}
        runnable = []
        selection = select_instances(list(paths.values()), o.series_filter)
        for n in selection.not_selected:
            records[by_path[str(n.path)]].update(status=NOT_SELECTED, reason=n.reason)
        for p in selection.files:
            try:
                ours = str(read_source(p).get("Manufacturer", "") or "") == MANUFACTURER
            except CovidEdgeError:
                ours = False  # unreadable: the pipeline reports it
            if ours:
                records[by_path[str(p)]].update(status=NOT_SELECTED,
                                                reason="made by covidedge (a result), not run again")
            else:
                runnable.append(p)
        job = self.work.new_job()
        files: Dict[str, List[Path]] = {}
        if runnable:
            notes: List[str] = []

            def on_result(result) -> None:
                rec = records[by_path[str(result.source)]]
                if not result.ok:
                    rec.update(status=FAILED, reason=result.error.replace(str(result.source), rec["uid"]))
                    return
                d = result.to_dict()
                rec.update({k: d[k] for k in ("label", "probabilities", "lung_fraction", "infected_fraction",
                                              "timings_ms", "quality_flags")})
                written = [Path(v) for k, v in result.outputs.items() if k.startswith("dicom_")]
                if written:
                    files[by_path[str(result.source)]] = written
                    rec["objects"] = sorted(p.name for p in written)
                else:
                    why = next((n.split(f"{result.source}: ", 1)[-1] for n in notes
                                if n.startswith("skipped DICOM outputs:") and str(result.source) in n),
                               "no DICOM objects were made")
                    rec.update(status=FAILED, reason=why.replace(str(result.source), rec["uid"]))

            try:
                run_inference(runnable, InferenceOptions(batch_size=o.batch_size, dicom_out=job,
                                                         series_filter=o.series_filter, overlay=o.overlay),
                              pipeline=pipe, on_result=on_result, on_note=notes.append)
            except Exception as exc:  # reported per instance, never a crash loop on the same image
                for p in runnable:
                    rec = records[by_path[str(p)]]
                    if "status" not in rec and not rec.get("objects"):
                        rec.update(status=FAILED, reason=one_line(exc).replace(str(p), rec["uid"]))
        dests = [d.key for d in o.destinations]
        for k in paths:
            rec = records[k]
            rec["processed"] = time.time()
            rec["ms"] = round(1000 * (time.perf_counter() - t0), 1)
            queued = self.work.commit(k, rec, files.get(k, ()), dests)
            since = (f", {rec['processed'] - rec['received']:.2f} s after receipt" if rec.get("received")
                     else "")
            if queued:
                inf = (rec.get("timings_ms") or {}).get("total")
                self.log(f"done {k}: {_describe(rec)}; {len(files[k])} objects queued "
                         f"({rec['ms']:.0f} ms for a batch of {len(paths)}"
                         + (f", pipeline {inf:.0f} ms" if inf is not None else "") + f"{since})")
                for d in o.destinations:
                    self._wake[d.key].set()
            else:
                self.log(f"{rec.get('status', FAILED)} {k}: {rec.get('reason', '')}; acknowledged, "
                         "nothing to send")
                with self._count_lock:
                    self._queued -= 1
        shutil.rmtree(job, ignore_errors=True)

    # -- delivery -----------------------------------------------------------------------------
    def _sender(self, dest) -> None:
        o = self.options
        delay, attempts, failing_since, last = 0.0, 0, None, None
        wake = self._wake[dest.key]
        while not self._stop.is_set():
            items = self.work.pending(dest.key)
            if not items:
                wake.wait(1.0)
                wake.clear()
                continue
            try:
                dest.deliver(items, lambda key, path: self._delivered(dest, key, path),
                             calling_ae=o.ae_title)
            except Exception as exc:  # DeliveryError, OSError, an unreadable object: retried later
                attempts += 1
                failing_since = failing_since or time.time()
                delay = min(max(delay * 2, float(o.retry_initial_s)), float(o.retry_max_s))
                text = one_line(exc)
                waiting = self.work.waiting(dest.key)
                self.log(f"cannot deliver to {dest.label}: {text}; {waiting} instance"
                         f"{'s' if waiting != 1 else ''} waiting, retrying in {delay:.1f} s")
                if text != last or attempts in (1, 10, 100):
                    self.work.write_state(dest.key, {"destination": dest.label, "last_error": text,
                                                     "failing_since": failing_since, "attempts": attempts})
                    last = text
                self._stop.wait(delay)
                continue
            if failing_since is not None:
                self.log(f"{dest.label} takes results again after {attempts} failed attempt"
                         f"{'s' if attempts != 1 else ''}")
                self.work.write_state(dest.key, {"destination": dest.label, "last_error": None,
                                                 "failing_since": None, "attempts": 0})
            delay, attempts, failing_since, last = 0.0, 0, None, None

    def _delivered(self, dest, key: str, path: Path) -> None:
        dest_done, all_done = self.work.mark_delivered(key, dest.key, path.name)
        if dest_done:
            rec = self.work.record(key) or {}
            since = f", {time.time() - rec['received']:.2f} s after receipt" if rec.get("received") else ""
            self.log(f"delivered {key} to {dest.label}: {len(rec.get('objects', ()))} objects{since}")
        if all_done:
            with self._count_lock:
                self._queued -= 1


def node_status(work) -> Dict[str, Any]:
    """What ``covidedge dicom-node --status WORK`` shows (see :meth:`WorkFolder.status`)."""
    folder = WorkFolder(work)
    if not folder.inbox.is_dir():
        raise BadInputError("is not a dicom-node work folder (no inbox/)", path=folder.path,
                            hint="give the --work folder of a node")
    return folder.status()


__all__ = ["ACCEPT_CHOICES", "DEFAULT_AE_TITLE", "DEFAULT_PORT", "DicomNode", "NodeOptions",
           "OUT_OF_RESOURCES", "node_status", "transfer_syntaxes"]
