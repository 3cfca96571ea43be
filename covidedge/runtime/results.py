"""Result files and tables for :class:`~covidedge.prediction.Prediction` /
:class:`~covidedge.prediction.Failure` records.

Result files are written as the run goes (one flushed line per image), as CSV or JSON lines,
so an interrupted run keeps everything it finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO, Any, Dict, Iterable, List, Optional, Sequence, Union

from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.fileio import FORMULA_PREFIXES, OutputLock, csv_safe, printable  # noqa: F401  (re-exported)
from covidedge.prediction import OUTPUT_KINDS, STAGES, Failure, Result

# ---------------------------------------------------------------------------------------------
# Flat rows (CSV) and result files
# ---------------------------------------------------------------------------------------------
def csv_columns(labels: Sequence[str] = ()) -> List[str]:
    """Columns of a results CSV: one probability column per class label."""
    return (["source", "status", "label"] + [f"p_{lab}" for lab in labels]
            + ["lung_fraction", "infected_fraction", "height", "width"]
            + [f"{s}_ms" for s in STAGES] + [f"{k}_png" for k in OUTPUT_KINDS]
            + ["quality_flags", "error", "exit_code"])


def flat_row(result: Result, labels: Sequence[str] = ()) -> Dict[str, Any]:
    """One result as a flat dict keyed by :func:`csv_columns` (empty string where absent)."""
    row: Dict[str, Any] = {c: "" for c in csv_columns(labels)}
    row["source"] = result.source
    if isinstance(result, Failure):
        row.update(status="failed", error=result.error, exit_code=result.exit_code)
        return row
    row["status"] = "ok"
    row["label"] = result.label or ""
    for lab in labels:
        if result.probabilities and lab in result.probabilities:
            row[f"p_{lab}"] = f"{result.probabilities[lab]:.6f}"
    for key in ("lung_fraction", "infected_fraction"):
        v = getattr(result, key)
        if v is not None:
            row[key] = f"{v:.6f}"
    row["height"], row["width"] = int(result.image_size[0]), int(result.image_size[1])
    for s in STAGES:
        if s in result.timings_ms:
            row[f"{s}_ms"] = f"{result.timings_ms[s]:.3f}"
    for k in OUTPUT_KINDS:
        row[f"{k}_png"] = result.outputs.get(k, "")
    row["quality_flags"] = " ".join(result.quality_flags)
    return row


class ResultsWriter:
    """Writes results one per line as they arrive, each line whole and flushed (CSV or JSON lines).

    ``target`` is a path or an open text stream. A path that already holds results (a file that
    is not empty) is refused unless ``overwrite``: an earlier run's results are never truncated
    by accident. A line that cannot be written (a full disk) is cut back off the file, and the
    error says how many results the file holds, all complete.
    """

    kind = "base"

    def __init__(self, target: Union[str, os.PathLike, IO[str]], labels: Sequence[str] = (), *,
                 overwrite: bool = False):
        self.labels = tuple(labels)
        self.count = 0
        if isinstance(target, (str, os.PathLike)):
            self.path: Optional[Path] = Path(target)
            if not overwrite and self.path.is_file() and self.path.stat().st_size > 0:
                raise BadInputError("results file already holds results of an earlier run", path=self.path,
                                    hint="pass --overwrite to replace them, or choose another --out / --results")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh: IO = open(self.path, "wb" if overwrite else "xb")
            except FileExistsError:
                raise BadInputError("results file appeared while starting (another run writes it?)",
                                    path=self.path, hint="choose another --out / --results") from None
            except OSError as exc:
                raise BadInputError(f"results file cannot be written: {exc.strerror or exc}",
                                    path=self.path, hint="choose a writable --results path") from exc
            self._owned = True
            self._binary = True
        else:
            self.path, self._fh, self._owned, self._binary = None, target, False, False
        self._good = 0  # bytes of whole lines written (files only)
        self._emit(self._start())

    def _start(self) -> str:
        return ""

    def _line(self, result: Result) -> str:
        raise NotImplementedError

    def _emit(self, text: str) -> None:
        if not text:
            return
        try:
            if self._binary:
                self._fh.write(text.encode("utf-8"))
            else:
                self._fh.write(text)
            self._fh.flush()
        except OSError as exc:
            self._cut_back()
            where = self.path if self.path is not None else "the output stream"
            raise RuntimeFailure(f"{exc.strerror or exc} writing {where} after {self.count} "
                                 f"result{'s' if self.count != 1 else ''}; the results up to "
                                 f"{self.count} are complete", hint="free some space and run the "
                                 "remaining images again") from exc
        if self._binary:
            self._good += len(text.encode("utf-8"))

    def _cut_back(self) -> None:
        """Drop a partly written line from the file (best effort: the disk may be full)."""
        if not self._binary:
            return
        try:
            self._fh.truncate(self._good)
            self._fh.seek(self._good)
        except (OSError, ValueError):
            try:
                os.truncate(self.path, self._good)
            except OSError:
                pass

    def write(self, result: Result) -> None:
        self._emit(self._line(result))
        self.count += 1

    def write_all(self, results: Iterable[Result]) -> None:
        for r in results:
            self.write(r)

    def close(self) -> None:
        if self._owned and not self._fh.closed:
            try:
                self._fh.close()
            except OSError:  # a buffered tail that no longer fits: keep whole lines only
                self._cut_back()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CsvResultsWriter(ResultsWriter):
    """A header line, then one row per result (see :func:`csv_columns`)."""

    kind = "csv"

    def _start(self) -> str:
        buf = io.StringIO()
        self._csv = csv.DictWriter(buf, fieldnames=csv_columns(self.labels), lineterminator="\n")
        self._buf = buf
        self._csv.writeheader()
        return self._take()

    def _take(self) -> str:
        text = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        return text

    def _line(self, result: Result) -> str:
        row = flat_row(result, self.labels)
        for key in ("source", "label", "error", *(f"{k}_png" for k in OUTPUT_KINDS)):
            if isinstance(row.get(key), str):
                row[key] = csv_safe(row[key])
        self._csv.writerow(row)
        return self._take()


class JsonlResultsWriter(ResultsWriter):
    """One JSON object per line (:meth:`Prediction.to_dict` / :meth:`Failure.to_dict`)."""

    kind = "jsonl"

    def _line(self, result: Result) -> str:
        return json.dumps(result.to_dict(), sort_keys=False) + "\n"


def results_format_for(path, default: str = "csv") -> str:
    """"csv" or "jsonl" from a results file name (``.csv``; ``.jsonl`` / ``.json`` / ``.ndjson``),
    else ``default``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return default


def open_results_writer(path, labels: Sequence[str] = (), fmt: Optional[str] = None, *,
                        overwrite: bool = False, protected: Iterable = ()) -> ResultsWriter:
    """A writer for ``path``; ``fmt`` ("csv" / "jsonl") defaults to the file's suffix.
    ``protected`` are files that must never be written (the inputs, the models and their
    manifests): naming one of them is refused before anything is opened."""
    fmt = fmt or results_format_for(path)
    if fmt not in ("csv", "jsonl"):
        raise BadInputError(f"results file must end in .csv or .jsonl, not {Path(path).suffix or 'nothing'}",
                            path=path, hint="e.g. --results results.csv")
    refuse_protected(path, protected, what="results file")
    return (CsvResultsWriter if fmt == "csv" else JsonlResultsWriter)(path, labels, overwrite=overwrite)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def refuse_protected(path, protected: Iterable, *, what: str = "output") -> None:
    """BadInputError when ``path`` is one of ``protected`` (an input image, a model, an engine or
    its manifest): covidedge never writes over what it reads."""
    target = Path(os.fspath(path))
    for p in protected:
        if p is None:
            continue
        if _same_file(target, Path(os.fspath(p))):
            raise BadInputError(f"{what} would overwrite an input or a model", path=target,
                                hint="choose another --results / --out path")


# ---------------------------------------------------------------------------------------------
# A compact table for the terminal
# ---------------------------------------------------------------------------------------------
class TableFormatter:
    """Fixed-width table lines, printable as results arrive: image, class, probability per class
    (with a classifier), lung and infected fractions in % (with a segmenter), total ms."""

    def __init__(self, labels: Sequence[str] = (), segmentation: bool = True, name_width: int = 24,
                 base: Optional[Union[str, os.PathLike]] = None):
        self.labels = tuple(labels)
        self.segmentation = segmentation
        self.name_width = max(8, min(int(name_width), 48))
        self.base = None if base is None else os.path.abspath(os.fspath(base))
        self._prob_w = [max(6, len(lab)) for lab in self.labels]
        self._label_w = max([9] + [len(lab) for lab in self.labels])

    @classmethod
    def for_files(cls, files: Sequence[Union[str, os.PathLike]], labels: Sequence[str] = (),
                  segmentation: bool = True) -> "TableFormatter":
        """A table for a run over ``files``: each image is shown by its path relative to the
        folder that holds them all (the input folder), so images of the same name in different
        subfolders stay apart."""
        base = common_folder(files)
        t = cls(labels, segmentation, base=base)
        t.name_width = max(8, min(max([len(t.shown(f)) for f in files] + [5]), 48))
        return t

    def shown(self, source: Union[str, os.PathLike]) -> str:
        """``source`` as the table shows it: relative to :attr:`base` when under it, else its name."""
        s = os.fspath(source)
        if self.base is not None:
            rel = os.path.relpath(os.path.abspath(s), self.base)
            if not rel.startswith(os.pardir):
                return rel
        return Path(s).name or s

    def _name(self, name: str) -> str:
        w = self.name_width
        name = printable(name)
        return name if len(name) <= w else name[: w // 2 - 1] + "..." + name[-(w - w // 2 - 2):]

    def header(self) -> str:
        parts = [f"{'image':<{self.name_width}}"]
        if self.labels:
            parts.append(f"{'class':<{self._label_w}}")
            parts += [f"{lab:>{w}}" for lab, w in zip(self.labels, self._prob_w)]
        if self.segmentation:
            parts += [f"{'lungs':>7}", f"{'infected':>8}"]
        parts.append(f"{'ms':>8}")
        return "  ".join(parts)

    def row(self, result: Result) -> str:
        name = f"{self._name(self.shown(result.source) if result.source else result.name):<{self.name_width}}"
        if isinstance(result, Failure):
            return f"{name}  failed: {printable(result.error)}"
        parts = [name]
        if self.labels:
            parts.append(f"{result.label or '':<{self._label_w}}")
            probs = result.probabilities or {}
            parts += [f"{probs.get(lab, float('nan')):>{w}.3f}" for lab, w in zip(self.labels, self._prob_w)]
        if self.segmentation:
            lf, inf = result.lung_fraction, result.infected_fraction
            parts.append(f"{'' if lf is None else f'{100 * lf:.1f}%':>7}")
            parts.append(f"{'' if inf is None else f'{100 * inf:.1f}%':>8}")
        parts.append(f"{result.timings_ms.get('total', float('nan')):>8.1f}")
        return "  ".join(parts)


def format_table(results: Sequence[Result], labels: Sequence[str] = (), segmentation: bool = True) -> str:
    """The whole table as one string (header + one line per result), images shown relative to
    the folder that holds them all."""
    t = TableFormatter.for_files([r.source or r.name for r in results], labels, segmentation)
    return "\n".join([t.header()] + [t.row(r) for r in results])


def common_folder(files: Sequence[Union[str, os.PathLike]]) -> Optional[str]:
    """The deepest folder holding every file of ``files`` (absolute), or None for no file."""
    folders = [os.path.dirname(os.path.abspath(os.fspath(f))) for f in files]
    if not folders:
        return None
    try:
        return os.path.commonpath(folders)
    except ValueError:  # different drives
        return None


def to_csv_text(results: Sequence[Result], labels: Sequence[str] = ()) -> str:
    """Results as CSV text (header + rows), as the results file holds them."""
    buf = io.StringIO()
    CsvResultsWriter(buf, labels).write_all(results)
    return buf.getvalue()


__all__ = ["csv_columns",
           "flat_row", "ResultsWriter", "CsvResultsWriter", "JsonlResultsWriter", "results_format_for",
           "open_results_writer", "TableFormatter", "format_table", "common_folder", "to_csv_text"]
