"""A training run's folder: what a new, resumed or overwriting run may find there, and a lock so
that two trainings never write one folder (a second one is refused while the first runs; the
lock goes with its process, so a killed run leaves nothing to clean up)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from covidedge.errors import BadInputError

__all__ = ["OUTPUT_FILES", "LOCK_FILE", "lock_run_dir"]

OUTPUT_FILES = ("best.pt", "last.pt", "history.json", "learning_curves.png", "metrics.json",
                "val_report")
#: Held (flock) by the process training into the folder; not one of the run's outputs.
LOCK_FILE = ".covidedge-train.lock"


@contextmanager
def lock_run_dir(out: Path, resume: bool, overwrite: bool):
    """Check ``out`` for a new run (empty or missing; with ``overwrite`` the run's own files are
    replaced), a resumed one (``last.pt`` there), then hold its lock while the block runs;
    BadInputError when another process is training into it."""
    _check(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / LOCK_FILE, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock (Windows): no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise BadInputError(f"another training ({holder}) is writing this run folder", path=out,
                                    hint="wait for it to finish (or stop it), or pick another --out") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}\n")
            fh.flush()
        if overwrite:
            _remove_outputs(out)
        yield
    finally:
        fh.close()


def _check(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise BadInputError("resume and overwrite were both requested; pick one", path=out)
    if out.exists() and not out.is_dir():
        raise BadInputError("output path exists and is not a folder", path=out)
    if resume:
        if not (out / "last.pt").is_file():
            raise BadInputError("nothing to resume: no last.pt in the output folder", path=out,
                                hint="start a new run without --resume")
        return
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
        raise BadInputError(
            "output folder is not empty", path=out,
            hint="pass --resume to continue that run, --overwrite to replace it, or another --out")


def _remove_outputs(out: Path) -> None:
    import shutil

    for name in OUTPUT_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
