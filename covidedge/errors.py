"""One exception family for covidedge; each error knows its command-line exit code.

Messages are one line: the file or tensor, what was wrong, what was expected, what to do.
"""

from __future__ import annotations

# Exit codes of the ``covidedge`` command (0 = success, 1 = some items of a batch failed,
# 2 = usage error, as click uses it).
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INCOMPATIBLE = 4
EXIT_RUNTIME = 5
EXIT_MISSING_DEPENDENCY = 6
EXIT_DATASET = 7


class CovidEdgeError(Exception):
    """Base class; ``exit_code`` is what the CLI returns when this error ends a command."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, path: object = None, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.hint = hint
        text = message
        if self.path is not None and not message.startswith(self.path):
            text = f"{self.path}: {message}"
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class BadInputError(CovidEdgeError):
    """An input image, tensor or option value that cannot be used."""

    exit_code = EXIT_BAD_INPUT


class UsageError(BadInputError):
    """Options that cannot be used together, or an option the call cannot honour (exit code 2, as
    for the command line's own usage errors)."""

    exit_code = EXIT_USAGE


class DatasetError(CovidEdgeError):
    """A dataset folder that is not in the expected layout, or is empty."""

    exit_code = EXIT_DATASET


class IncompatibleModelError(CovidEdgeError):
    """A model, checkpoint or engine that does not fit the task, the machine or the request."""

    exit_code = EXIT_INCOMPATIBLE


class RuntimeFailure(CovidEdgeError):
    """A backend failed while building or running a model."""

    exit_code = EXIT_RUNTIME


class MissingDependencyError(CovidEdgeError):
    """An optional library needed for this operation is not installed."""

    exit_code = EXIT_MISSING_DEPENDENCY


def one_line(exc: BaseException, source: str | None = None) -> str:
    """An exception as one line: whitespace collapsed; the exception's type in front unless it is a
    covidedge error (which already reads as a sentence); ``source: `` in front when given and the
    text does not name it yet."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, CovidEdgeError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = text or type(exc).__name__
    if source and source not in text:
        text = f"{source}: {text}"
    return text


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (a third-party error's detail follows on later
    lines), or its type's name when it has no text."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require(module: str, extra: str | None = None, purpose: str | None = None):
    """Import an optional module or raise MissingDependencyError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {purpose}" if purpose else ""
        how = f"pip install 'covidedge[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(
            f"{module} is not installed{what}: {exc}", hint=f"install it with: {how}"
        ) from exc
