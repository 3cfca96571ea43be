"""The node's work folder: an on-disk queue that loses nothing when the process or a PACS stops.

::

    WORK/
      inbox/<uid>.dcm, <uid>.json  received instances waiting for inference (.json: caller, time)
      results/<uid>/               one instance's results: record.json, files/*.dcm and, per
                                   destination, pending/<destination>/<file>: an empty marker per
                                   object not yet delivered there
      done/<uid>.json              what became of an instance: delivered, not selected or failed
      state/<destination>.json     each destination's last delivery error (for --status)
      tmp/                         what is being written; emptied at start
      .covidedge.lock              the running node (pid, host, start)

``<uid>`` is the SOP Instance UID of the received instance. Every step is a write to ``tmp/`` or
a hidden sibling followed by a rename, and a received instance is on disk (fsync'd) before the
C-STORE response says success, so a node killed at any point finds a consistent folder on
restart: an instance in ``inbox/`` whose results or record already exist was processed, a
results folder without markers was delivered, anything in ``tmp/`` was never acknowledged or
committed. A SOP instance known in any of the three states is a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from covidedge.errors import BadInputError
from covidedge.fileio import atomic_target

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
LOCK_NAME = ".covidedge.lock"
#: Final states of an instance, as ``done/<uid>.json`` records them.
DELIVERED, NOT_SELECTED, FAILED = "delivered", "not selected", "failed"


def uid_key(uid: str) -> str:
    """A file name for a SOP Instance UID: the UID itself when it is a valid one (digits and
    dots, at most 64 characters), else ``x-`` and the first 32 hex digits of its sha256."""
    uid = str(uid).strip()
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "x-" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:32]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and fsync it and its folder, so that what a C-STORE
    response acknowledges survives a crash or a power cut."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    _fsync_dir(path.parent)
    return path


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _json_bytes(doc: Dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode("utf-8")


class WorkFolder:
    """The folder layout above, with the few operations the node needs; thread-safe."""

    def __init__(self, path):
        self.path = Path(os.fspath(path))
        self.inbox = self.path / "inbox"
        self.results = self.path / "results"
        self.done = self.path / "done"
        self.state = self.path / "state"
        self.tmp = self.path / "tmp"
        self._lock = threading.Lock()
        self._receiving: set = set()

    def create(self) -> "WorkFolder":
        try:
            for d in (self.inbox, self.results, self.done, self.state, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(f"work folder cannot be made: {exc.strerror or exc}", path=self.path,
                                hint="choose a writable --work folder") from exc
        return self

    # -- paths ------------------------------------------------------------------------------
    def inbox_path(self, key: str) -> Path:
        return self.inbox / f"{key}.dcm"

    def inbox_meta(self, key: str) -> Dict[str, Any]:
        return _read_json(self.inbox / f"{key}.json") or {}

    # -- start --------------------------------------------------------------------------------
    def recover(self) -> List[str]:
        """Finish what a stopped node left half done; return the inbox keys to run, oldest first."""
        for child in self.tmp.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        for folder in (self.inbox, self.done, self.state):  # hidden siblings of interrupted writes
            for child in folder.glob(".*.tmp"):
                child.unlink(missing_ok=True)
        for res in list(self.results.iterdir()):
            if (self.done / f"{res.name}.json").exists():
                shutil.rmtree(res, ignore_errors=True)  # finalised, then stopped while removing
            elif not self._markers(res):
                self.finalize(res.name)
        waiting = []
        for dcm in sorted(self.inbox.glob("*.dcm"), key=lambda p: p.stat().st_mtime):
            key = dcm.stem
            if (self.results / key).exists() or (self.done / f"{key}.json").exists():
                self._drop_inbox(key)  # processed, then stopped before the source was removed
            else:
                waiting.append(key)
        for meta in self.inbox.glob("*.json"):  # a caller record whose instance never arrived
            if not meta.with_suffix(".dcm").exists():
                meta.unlink(missing_ok=True)
        return waiting

    def queued(self) -> int:
        """Instances received and not finished: waiting for inference or for delivery."""
        return len(list(self.inbox.glob("*.dcm"))) + len(self._result_folders())

    # -- receive ------------------------------------------------------------------------------
    def reserve(self, key: str) -> Optional[str]:
        """Claim ``key`` for a receipt; None when claimed, else what is known of it already."""
        with self._lock:
            if key in self._receiving:
                return "being received on another association"
            if self.inbox_path(key).exists():
                return "waiting for inference"
            if (self.results / key).exists():
                return "processed, results waiting for delivery"
            record = _read_json(self.done / f"{key}.json")
            if record is not None:
                return f"already {record.get('status', 'done')}"
            self._receiving.add(key)
            return None

    def store(self, key: str, data: bytes, meta: Dict[str, Any]) -> Path:
        """Write a received instance (and who sent it) durably into the inbox; releases the claim."""
        try:
            write_durable(self.inbox / f"{key}.json", _json_bytes(meta))
            return write_durable(self.inbox_path(key), data)
        finally:
            with self._lock:
                self._receiving.discard(key)

    def release(self, key: str) -> None:
        with self._lock:
            self._receiving.discard(key)

    def _drop_inbox(self, key: str) -> None:
        self.inbox_path(key).unlink(missing_ok=True)
        (self.inbox / f"{key}.json").unlink(missing_ok=True)

    # -- processed ----------------------------------------------------------------------------
    def new_job(self) -> Path:
        job = self.tmp / f"job-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        job.mkdir(parents=True)
        return job

    def commit(self, key: str, record: Dict[str, Any], files: Iterable[Path],
               destinations: Iterable[str]) -> bool:
        """Record the outcome of ``key``: with files, a results folder whose objects wait for
        each destination (True); without, its final record (False). Then the source goes."""
        files = [Path(f) for f in files]
        if not files:
            self._write_done(key, record)
            self._drop_inbox(key)
            return False
        stage = self.tmp / f"{key}.res"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "files").mkdir(parents=True)
        for f in files:
            _fsync_file(f)
            os.replace(f, stage / "files" / f.name)
        for dest in destinations:
            marks = stage / "pending" / dest
            marks.mkdir(parents=True)
            for f in files:
                (marks / f.name).touch()
        write_durable(stage / "record.json", _json_bytes(record))
        os.replace(stage, self.results / key)
        _fsync_dir(self.results)
        self._drop_inbox(key)
        return True

    def _write_done(self, key: str, record: Dict[str, Any]) -> None:
        write_durable(self.done / f"{key}.json", _json_bytes(record))

    # -- delivery -----------------------------------------------------------------------------
    @staticmethod
    def _markers(res: Path, dest: Optional[str] = None) -> List[Path]:
        """Markers of objects not yet delivered (to ``dest``, or anywhere); a results folder
        removed meanwhile by another thread has none."""
        pending = res / "pending"
        try:
            folders = [pending / dest] if dest else (list(pending.iterdir()) if pending.is_dir() else [])
            return [m for d in folders if d.is_dir() for m in d.iterdir()]
        except FileNotFoundError:
            return []

    def _result_folders(self) -> List[Tuple[float, Path]]:
        """(mtime, folder) of every results folder, oldest first (skipping any removed meanwhile)."""
        out = []
        for p in self.results.iterdir():
            try:
                out.append((p.stat().st_mtime, p))
            except FileNotFoundError:
                continue
        return sorted(out)

    def pending(self, dest: str, limit: int = 64) -> List[Tuple[str, Path]]:
        """Up to ``limit`` (key, object file) pairs still to deliver to ``dest``, oldest first."""
        out: List[Tuple[str, Path]] = []
        for _, res in self._result_folders():
            for marker in sorted(self._markers(res, dest)):
                out.append((res.name, res / "files" / marker.name))
                if len(out) >= limit:
                    return out
        return out

    def waiting(self, dest: str) -> int:
        """Instances whose results still wait for ``dest``."""
        return sum(1 for _, p in self._result_folders() if self._markers(p, dest))

    def mark_delivered(self, key: str, dest: str, name: str) -> Tuple[bool, bool]:
        """One object of ``key`` reached ``dest``: (all of ``key``'s objects reached ``dest``,
        ``key`` reached every destination and was finalised)."""
        res = self.results / key
        with self._lock:
            (res / "pending" / dest / name).unlink(missing_ok=True)
            if self._markers(res, dest):
                return False, False
            if self._markers(res):
                return True, False
            self.finalize(key)
            return True, True

    def finalize(self, key: str) -> None:
        """Every object of ``key`` was delivered: write its record, remove its results."""
        res = self.results / key
        record = _read_json(res / "record.json") or {"uid": key}
        record.update(status=DELIVERED, delivered=time.time())
        self._write_done(key, record)
        shutil.rmtree(res, ignore_errors=True)

    def record(self, key: str) -> Optional[Dict[str, Any]]:
        """The results record of ``key`` while it waits, or its final record."""
        return _read_json(self.results / key / "record.json") or _read_json(self.done / f"{key}.json")

    # -- state of destinations ---------------------------------------------------------------
    def write_state(self, dest: str, state: Dict[str, Any]) -> None:
        write_durable(self.state / f"{dest}.json", _json_bytes(state))

    # -- status -------------------------------------------------------------------------------
    def node(self) -> Optional[Dict[str, Any]]:
        """The running node (pid, host, started) from its lock, or None when none runs."""
        import socket

        who = _read_json(self.path / LOCK_NAME)
        if who is None:
            return None
        if who.get("host") == socket.gethostname():
            try:
                os.kill(int(who.get("pid")), 0)
            except (ProcessLookupError, ValueError, TypeError):
                return None
            except PermissionError:
                pass
        return who

    def status(self) -> Dict[str, Any]:
        """Counts of the queue and per destination what waits and why, for ``--status``."""
        now = time.time()
        inbox = []
        for p in self.inbox.glob("*.dcm"):
            try:
                inbox.append(p.stat().st_mtime)
            except FileNotFoundError:  # run and removed meanwhile
                continue
        inbox.sort()
        results = self._result_folders() if self.results.is_dir() else []
        dests: Dict[str, Dict[str, Any]] = {}
        for mtime, res in results:
            waiting = {m.parent.name for m in self._markers(res)}
            for name in waiting:
                entry = dests.setdefault(name, {"waiting": 0, "oldest_s": 0.0})
                entry["waiting"] += 1
                entry["oldest_s"] = max(entry["oldest_s"], round(now - mtime, 1))
        for key, entry in dests.items():
            state = _read_json(self.state / f"{key}.json") or {}
            entry.update(destination=state.get("destination", key), last_error=state.get("last_error"),
                         failing_since=state.get("failing_since"), attempts=state.get("attempts", 0))
        done: Dict[str, int] = {DELIVERED: 0, NOT_SELECTED: 0, FAILED: 0}
        for rec in (self.done.glob("*.json") if self.done.is_dir() else ()):
            status = (_read_json(rec) or {}).get("status", FAILED)
            done[status] = done.get(status, 0) + 1
        return {"work": str(self.path), "node": self.node(),
                "waiting_for_inference": len(inbox),
                "oldest_waiting_s": round(now - inbox[0], 1) if inbox else None,
                "waiting_for_delivery": len(results),
                "destinations": {e["destination"]: {k: v for k, v in e.items() if k != "destination"}
                                 for e in dests.values()},
                "done": done}


def status_lines(status: Dict[str, Any]) -> List[str]:
    """``--status`` as lines for a terminal."""
    node = status.get("node")
    running = (f"node running (pid {node.get('pid')} on {node.get('host')}, started {node.get('started')})"
               if node else "no node running")
    lines = [f"work folder {status['work']}: {running}"]
    oldest = status.get("oldest_waiting_s")
    lines.append(f"waiting for inference: {status['waiting_for_inference']}"
                 + (f" (oldest received {oldest:.0f} s ago)" if oldest is not None else ""))
    lines.append(f"waiting for delivery: {status['waiting_for_delivery']}")
    for dest, e in status["destinations"].items():
        line = f"  {dest}: {e['waiting']} waiting, oldest {e['oldest_s']:.0f} s"
        if e.get("last_error") and e.get("failing_since"):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["failing_since"]))
            line += f"; failing since {since} ({e['attempts']} attempts): {e['last_error']}"
        lines.append(line)
    done = status["done"]
    lines.append(f"done: {sum(done.values())} ({', '.join(f'{v} {k}' for k, v in done.items())})")
    return lines


__all__ = ["DELIVERED", "FAILED", "NOT_SELECTED", "WorkFolder", "status_lines", "uid_key", "write_durable"]
