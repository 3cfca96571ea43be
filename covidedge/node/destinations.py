"""Where the node's results go: a DICOM peer by C-STORE (``AE@HOST:PORT``) or a folder.

A destination delivers a list of (instance key, object file) pairs and calls back once per
object it delivered, so the work folder marks each object as it lands; a failure raises
:class:`DeliveryError` with one line saying why, and the node retries with backoff. Delivery is
at least once and, for the node's own restarts, exactly once: an object is marked delivered
right after the peer's success status, and a folder destination never writes an object twice.
Only if the node dies between the peer's success status and that mark (microseconds) is the
object sent again, with the same SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from covidedge.errors import BadInputError, CovidEdgeError, one_line
from covidedge.fileio import atomic_target

#: C-STORE statuses after which the object is stored: success and the standard's warnings
#: (coercion of data elements, elements discarded, data set does not match SOP class).
STORED = (0x0000, 0xB000, 0xB006, 0xB007)
Delivered = Callable[[str, Path], None]


class DeliveryError(CovidEdgeError):
    """A destination did not take the results (peer down, association refused, failure status)."""


def check_ae_title(title: str, what: str) -> str:
    """An AE title as DICOM allows it: 1 to 16 characters, no backslash or control characters."""
    text = str(title).strip()
    if not text or len(text) > 16 or "\\" in text or any(ord(c) < 32 or ord(c) > 126 for c in text):
        raise BadInputError(f"{what} {title!r} is not a DICOM AE title",
                            hint="give 1 to 16 printable ASCII characters without a backslash")
    return text


@dataclass(frozen=True)
class StoreDestination:
    """A DICOM Storage SCP (the PACS) reached by C-STORE."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "StoreDestination":
        """``AE@HOST:PORT`` (an IPv6 host in brackets: ``PACS@[::1]:104``)."""
        m = re.match(r"^([^@]+)@(\[[^\]]+\]|[^:@]+):(\d+)$", str(text).strip())
        hint = "give AE@HOST:PORT, e.g. PACS@10.0.0.5:104"
        if not m:
            raise BadInputError(f"--forward {text!r} is not AE@HOST:PORT", hint=hint)
        port = int(m.group(3))
        if not 0 < port < 65536:
            raise BadInputError(f"--forward {text!r}: port {port} is not in 1..65535", hint=hint)
        return cls(check_ae_title(m.group(1), "--forward AE title"), m.group(2).strip("[]"), port)

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    @property
    def key(self) -> str:
        """A file name for this destination in the work folder."""
        return "store-" + re.sub(r"[^A-Za-z0-9.\-]", "_", f"{self.ae_title}@{self.host}_{self.port}")

    def _unreachable(self, timeout_s: float) -> str:
        """Why no association was made when the peer did not reject it: probed after the fact."""
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=min(timeout_s, 5.0)):
                return "aborted the association"
        except ConnectionRefusedError:
            return "connection refused (nothing listens there)"
        except OSError as exc:
            return f"cannot be reached: {exc.strerror or exc}"

    def deliver(self, items: Sequence[Tuple[str, Path]], on_delivered: Delivered, *, calling_ae: str,
                tls=None, timeout_s: float = 30.0) -> None:
        """Send ``items`` on one association; ``on_delivered(key, file)`` after each stored one."""
        from pydicom.filereader import read_file_meta_info
        from pynetdicom import AE, _config

        # Send each file's encoded data set as it is on disk, in PDU-sized chunks, instead of
        # decoding and encoding it again: less CPU and memory. Needs the file's own transfer
        # syntax accepted, which is what the contexts below ask for.
        _config.STORE_SEND_CHUNKED_DATASET = True

        contexts: List[Tuple[str, str]] = []
        for _, path in items:
            meta = read_file_meta_info(str(path))
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            if pair not in contexts:
                contexts.append(pair)
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.connection_timeout = min(timeout_s, 10.0)
        for sop_class, syntax in contexts[:128]:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, tls_args=tls)
        if not assoc.is_established:
            why = "refused the association" if assoc.is_rejected else self._unreachable(timeout_s)
            raise DeliveryError(f"{self.label}: {why}",
                                hint="check that the PACS runs and knows this node's AE title")
        refused: List[str] = []  # an object the PACS refuses does not hold up the others
        try:
            for key, path in items:
                try:
                    status = assoc.send_c_store(str(path))
                except ValueError as exc:  # the PACS accepted no context for its SOP class / syntax
                    refused.append(f"{path.name} not sent: {one_line(exc)}")
                    continue
                except RuntimeError as exc:  # the association is gone
                    raise DeliveryError(f"{self.label}: {path.name} not sent: {one_line(exc)}") from exc
                code = getattr(status, "Status", None) if status else None
                if code is None:
                    raise DeliveryError(f"{self.label}: no C-STORE response for {path.name} "
                                        "(association lost)")
                if int(code) not in STORED:
                    refused.append(f"C-STORE of {path.name} answered 0x{int(code):04X}")
                    continue
                on_delivered(key, path)
        finally:
            if assoc.is_established:
                assoc.release()
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise DeliveryError(f"{self.label}: {refused[0]}{more}", hint="the PACS refused it; see its log")


@dataclass(frozen=True)
class FolderDestination:
    """A folder (e.g. one a PACS imports from): each object copied in atomically, never twice."""

    folder: Path

    @property
    def label(self) -> str:
        return f"folder {self.folder}"

    @property
    def key(self) -> str:
        import hashlib

        return "folder-" + hashlib.sha256(os.fsencode(os.path.abspath(self.folder))).hexdigest()[:16]

    def _target(self, path: Path):
        """Where ``path`` goes: its name, or ``<stem>_2.dcm`` ... when another file has it; None
        when the same bytes are there already (copied before the node stopped)."""
        data = path.read_bytes()
        n = 1
        while True:
            dst = self.folder / (path.name if n == 1 else f"{path.stem}_{n}{path.suffix}")
            if not dst.exists():
                return dst
            if dst.is_file() and dst.stat().st_size == len(data) and dst.read_bytes() == data:
                return None
            n += 1

    def deliver(self, items: Sequence[Tuple[str, Path]], on_delivered: Delivered, **_) -> None:
        for key, path in items:
            try:
                dst = self._target(path)
                if dst is not None:
                    with atomic_target(dst) as tmp:
                        with open(path, "rb") as src, open(tmp, "wb") as out:
                            out.write(src.read())
                            out.flush()
                            os.fsync(out.fileno())
            except OSError as exc:
                raise DeliveryError(f"{self.folder / path.name}: cannot be written: {exc.strerror or exc}",
                                    hint="check that the --dicom-out folder is writable and has space") from exc
            on_delivered(key, path)


__all__ = ["DeliveryError", "FolderDestination", "STORED", "StoreDestination", "check_ae_title"]
