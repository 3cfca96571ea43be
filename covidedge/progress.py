"""The one home for progress: bars and one-line notes on stderr, shown only when asked.

The API is quiet by default (``progress=False``); the command line asks (``progress=True``), and
bars appear only on a terminal. tqdm is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional


class _NoBar:
    """What :func:`bar` returns when nothing is shown: the same calls, doing nothing."""

    def __init__(self, iterable: Optional[Iterable] = None):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable if self._iterable is not None else ())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
        enabled: bool = False):
    """A progress bar on stderr over ``iterable`` (or ``total`` steps, advanced with ``update``):
    tqdm when ``enabled`` and stderr is a terminal, else a bar that shows nothing."""
    if not (enabled and sys.stderr.isatty()):
        return _NoBar(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


def note(enabled: bool, text: str) -> None:
    """One line on stderr when ``enabled``, nothing otherwise (a bar on screen stays intact)."""
    if not enabled:
        return
    if "tqdm" in sys.modules:  # a bar may be on screen: print above it
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
        return
    print(text, file=sys.stderr, flush=True)


__all__ = ["bar", "note"]
