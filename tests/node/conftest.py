"""Fixtures for the DICOM node tests: tiny models, a PACS stand-in and a modality, on loopback."""

from __future__ import annotations

import threading
import time

import pytest

from tests.graphs import tiny_models

pytest.importorskip("pynetdicom", reason="pynetdicom (the dicom extra) runs the DICOM node")
pytest.importorskip("highdicom", reason="highdicom (the dicom extra) writes the node's results")

#: SOP classes of what the node sends.
SEG, COMPREHENSIVE_SR, SC = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33",
                             "1.2.840.10008.5.1.4.1.1.7")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(classifier.onnx, segmenter.onnx): hand-made graphs whose outputs are known exactly."""
    return tiny_models(tmp_path_factory.mktemp("models"))


class Pacs:
    """A Storage SCP on 127.0.0.1 that keeps what it receives; stop and start it again on the
    same port to play a PACS that goes down and comes back."""

    def __init__(self, port: int = 0, ae_title: str = "PACS", sop_classes=None):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts

        self.ae = AE(ae_title=ae_title)
        for uid in sop_classes or [cx.abstract_syntax for cx in AllStoragePresentationContexts]:
            self.ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self.port = port
        self.received = []
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def start(self) -> "Pacs":
        from pynetdicom import evt

        self._server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                            evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def wait_for(self, n: int, timeout: float = 60.0) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.05)
        with self._lock:
            return list(self.received)

    @property
    def address(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"


@pytest.fixture
def pacs():
    p = Pacs().start()
    yield p
    p.stop()


def send(port: int, paths, calling: str = "MODALITY", called: str = "COVIDEDGE"):
    """C-STORE ``paths`` to the node on one association, as a modality would; the statuses
    (None where the association could not be made)."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    pairs = []
    for p in paths:
        meta = pydicom.filereader.read_file_meta_info(str(p))
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
            ae.add_requested_context(*pair)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(str(p)).Status) for p in paths]
    finally:
        assoc.release()


def echo(port: int, calling: str = "MODALITY", called: str = "COVIDEDGE"):
    """C-ECHO status, or None when the association is refused."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
