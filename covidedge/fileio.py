"""Small file helpers every layer uses: a file's sha256, atomic writes, the never-overwrite rule
and the lock that keeps two runs out of one shared output.

Every output covidedge writes goes through here:

* :func:`atomic_target` / :func:`write_atomic` write under a temporary sibling and publish it
  whole; with ``overwrite=False`` the publication is a hard link, which fails when the name
  exists, so even a racing process cannot be overwritten (:class:`OutputExistsError`).
* :func:`refuse_existing` is the same rule checked up front, before any work is done, with a
  one-line error naming the file and the flag that allows replacing it.
* :class:`OutputLock` is held by one run while it writes a shared output (a folder, a results
  file): a second run is refused naming the first, a lock left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from covidedge.errors import BadInputError

PathLike = Union[str, "os.PathLike[str]"]


class OutputExistsError(BadInputError):
    """An output path already exists and covidedge does not overwrite it."""


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def refuse_existing(path: PathLike, *, what: str = "output", overwrite: bool = False,
                    flag: str = "--overwrite") -> None:
    """The never-overwrite rule: OutputExistsError when ``path`` exists (a file, a folder, a
    dangling link) and ``overwrite`` is not set. Call it before the work that would write it."""
    path = Path(os.fspath(path))
    if overwrite:
        if path.is_dir() and not path.is_symlink():
            raise OutputExistsError(f"{what} is an existing folder", path=path,
                                    hint="name a file, not a folder")
        return
    if _exists(path):
        raise OutputExistsError(f"{what} already exists; covidedge does not overwrite it", path=path,
                                hint=f"choose another path, or pass {flag} to replace it"
                                     if flag else "choose another path")


@contextlib.contextmanager
def atomic_target(path: PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is published as ``path``, on
    any failure it is removed. A reader never sees a half-written file, and an interrupted write
    leaves the old file (or none) in place. With ``overwrite=False`` an existing ``path`` is
    never replaced, not even one created by another process while this one wrote
    (OutputExistsError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        refuse_existing(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name exists: no window to overwrite
            except FileExistsError:
                raise OutputExistsError("appeared while it was written (another run writes here?); "
                                        "covidedge does not overwrite it", path=path,
                                        hint="choose another output path") from None
            except OSError:  # a file system without hard links: exclusive create, then move over it
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                os.close(fd)
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_target`)."""
    with atomic_target(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x00, 0x20), 0x7f)}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: str) -> str:
    """``text`` for one line of a terminal, a log or a CSV cell: control characters (newlines,
    escapes, tabs) shown as backslash escapes, so a file name can neither split a line nor fake
    another."""
    return str(text).translate(_CONTROL)


#: First characters that make a spreadsheet read a CSV cell as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """A CSV text cell that a spreadsheet shows as text: a leading ``= + - @`` (or tab / CR) gets a
    ``'`` in front (OWASP's advice against CSV formula injection)."""
    text = str(text)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


class OutputLock:
    """Held by one run while it writes a shared output. For a folder it is
    ``<folder>/.covidedge.lock``; for a file (:meth:`for_file`) ``<dir>/.<name>.covidedge.lock``.
    A second run is refused, naming the first (pid, host, start); a lock left by a process that
    is gone is taken over. The lock file is created exclusively (``O_EXCL``), so of two processes
    starting together exactly one gets it."""

    NAME = ".covidedge.lock"

    def __init__(self, folder, *, path: Optional[PathLike] = None, what: str = "output folder"):
        self.folder = Path(os.fspath(folder))
        self.path = Path(os.fspath(path)) if path is not None else self.folder / self.NAME
        self.what = what
        self.target = self.folder if path is None else self.path
        self._held = False

    @classmethod
    def for_file(cls, target: PathLike, what: str = "results file") -> "OutputLock":
        """The lock of one shared output file (a results file two runs could append to)."""
        target = Path(os.fspath(target))
        lock = cls(target.parent, path=target.parent / f".{target.name}{cls.NAME}", what=what)
        lock.target = target
        return lock

    def acquire(self) -> "OutputLock":
        import socket
        import time as _time

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.folder, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise BadInputError(f"{self.what} cannot be written: {exc.strerror or exc}", path=self.folder,
                                hint="choose a writable output path") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is None:  # being written by its owner right now, or garbage: look again
                    _time.sleep(0.2)
                    other = self._read()
                if other is not None and not self._alive(other):
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                who = (f"pid {other.get('pid')} on {other.get('host')}, started {other.get('started')}"
                       if other else "another process")
                raise BadInputError(f"{self.what} is in use by another covidedge run ({who})",
                                    path=self.target, hint="wait for it to finish, or choose another output")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise BadInputError(f"could not lock the {self.what}", path=self.folder,
                            hint=f"remove a stale {self.path.name} there, or choose another output")

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(other: Dict[str, Any]) -> bool:
        import socket

        if other.get("host") != socket.gethostname():
            return True  # another machine's run (shared folder): cannot tell, assume it runs
        try:
            os.kill(int(other.get("pid")), 0)
        except (ProcessLookupError, ValueError, TypeError):
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        if self._held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self._held = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["sha256_file", "atomic_target", "write_atomic", "refuse_existing", "OutputExistsError",
           "OutputLock", "printable", "csv_safe", "FORMULA_PREFIXES"]
