#!/usr/bin/env python
"""Images per second through ``covidedge dicom-node`` on loopback, against ``infer --dicom-out``.

In one run, on the same synthetic DX images (``--images`` of ``--size`` px, 12-bit):

- in process: :func:`covidedge.run_inference` with ``dicom_out`` (what ``covidedge infer
  --dicom-out`` does): decode, models, SEG + SR + SC written to a folder;
- the node: ``--clients`` modalities (pynetdicom SCUs, one association each, in this process)
  send the images by C-STORE to ``covidedge dicom-node`` on 127.0.0.1 (its own process, as
  deployed), which journals them, runs them with ``--workers`` workers and C-STOREs SEG + SR +
  SC to a PACS stand-in (a pynetdicom SCP in this process); the clock runs from the first
  C-STORE to the last object at the PACS.

It prints images/s for each, the node's median and p90 time from receipt to results queued, and
the ratio of the node to in process. Models: ``-c`` / ``-s``, else the default models as
``covidedge infer`` picks them. Needs the dicom extra (pydicom, highdicom, pynetdicom).

Example (about a minute with the default models on a 2-core CPU):
    python benchmarks/dicom_node.py --images 24 --clients 4 --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List


def make_images(folder: Path, n: int, size: int) -> List[Path]:
    """``n`` synthetic frontal chest DX images (12-bit, MONOCHROME2) of one study."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from covidedge.data.synth import render_chest

    rng = np.random.default_rng(0)
    study = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = render_chest(rng, ("COVID-19", "Non-COVID", "Normal")[i % 3], size)[0]
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "Bench^Patient", "BENCH", study
        ds.SeriesInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = generate_uid(), "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "A1", "", "", "O"
        ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, i + 1, "bench"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = size, size, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PatientOrientation = ["L", "F"]
        ds.PixelData = (img.astype(np.uint16) * 16).tobytes()
        path = folder / f"dx{i:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        out.append(path)
    return out


def bench_in_process(files: List[Path], classifier, segmenter, overlay: bool, tmp: Path) -> Dict[str, object]:
    from covidedge.runtime.run import run_inference

    run_inference(files[:2], classifier=classifier, segmenter=segmenter, dicom_out=tmp / "warm",
                  overlay=overlay)  # warm-up: loading the models is not what is timed
    t0 = time.perf_counter()
    summary = run_inference(files, classifier=classifier, segmenter=segmenter, dicom_out=tmp / "dicom",
                            overlay=overlay)
    wall = time.perf_counter() - t0
    assert summary.ok == len(files), summary.line()
    return {"mode": "in process (infer --dicom-out)", "workers": 1, "clients": 0,
            "images_per_s": len(files) / wall, "seconds": wall}


class _Pacs:
    def __init__(self):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt

        self.count = 0
        self.last = 0.0
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event):
        event.encoded_dataset()
        with self._lock:
            self.count += 1
            self.last = time.perf_counter()
        return 0x0000


def _send(port: int, files: List[Path], statuses: List[int]) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDEDGE")
    assert assoc.is_established, "the node refused the benchmark's association"
    for f in files:
        statuses.append(int(assoc.send_c_store(str(f)).Status))
    assoc.release()


class _NodeProcess:
    """``covidedge dicom-node`` in its own process, as it is deployed; its port from its log."""

    def __init__(self, work: Path, pacs_port: int, classifier, segmenter, workers: int, overlay: bool):
        import subprocess

        cmd = [sys.executable, "-m", "covidedge", "dicom-node", "--work", str(work), "--port", "0",
               "--forward", f"PACS@127.0.0.1:{pacs_port}", "--workers", str(workers), "--min-free-mb", "0"]
        cmd += (["-c", str(classifier)] if classifier else []) + (["-s", str(segmenter)] if segmenter else [])
        cmd += [] if overlay else ["--no-overlay"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = None
        for line in self.proc.stderr:
            if " listening on " in line:
                self.port = int(line.split(" listening on ")[1].split()[0].rsplit(":", 1)[1])
                break
        if self.port is None:
            raise SystemExit(f"the node did not start (exit code {self.proc.wait()})")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def bench_node(files: List[Path], classifier, segmenter, overlay: bool, workers: int, clients: int,
               tmp: Path, warm: List[Path]) -> Dict[str, object]:
    pacs = _Pacs()
    per_image = 3 if overlay else 2
    work = tmp / f"work-{workers}"
    node = _NodeProcess(work, pacs.port, classifier, segmenter, workers, overlay)
    try:
        statuses: List[int] = []
        _send(node.port, warm, statuses)  # warm-up: first runs of the models and the writers
        while pacs.count < per_image * len(warm):
            time.sleep(0.01)
        base = pacs.count
        t0 = time.perf_counter()
        threads = [threading.Thread(target=_send, args=(node.port, files[i::clients], statuses))
                   for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while pacs.count < base + per_image * len(files):
            time.sleep(0.01)
        wall = pacs.last - t0
        assert all(s == 0 for s in statuses), statuses
    finally:
        node.stop()
        pacs.server.shutdown()
    import pydicom

    warm_uids = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in warm}
    done = [json.loads(p.read_text()) for p in (work / "done").glob("*.json")]
    ms = sorted(1000 * (d["processed"] - d["received"]) for d in done
                if d.get("received") and d.get("uid") not in warm_uids)
    return {"mode": "dicom-node (C-STORE in and out)", "workers": workers, "clients": clients,
            "images_per_s": len(files) / wall, "seconds": wall,
            "receipt_to_queued_p50_ms": statistics.median(ms),
            "receipt_to_queued_p90_ms": ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", "-c")
    ap.add_argument("--segmenter", "-s")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=512, help="image side in px")
    ap.add_argument("--clients", type=int, default=4, help="concurrent associations")
    ap.add_argument("--workers", default="1", help="comma-separated worker counts to time")
    ap.add_argument("--no-overlay", action="store_true", help="SEG and SR only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    classifier, segmenter = args.classifier, args.segmenter
    if not classifier and not segmenter:
        from covidedge.runtime.defaults import default_models

        chosen = default_models()
        print(chosen.line, file=sys.stderr)
        classifier, segmenter = chosen.classifier, chosen.segmenter
    overlay = not args.no_overlay
    with tempfile.TemporaryDirectory(prefix="covidedge-node-bench-") as tmp:
        tmp = Path(tmp)
        files = make_images(tmp / "in", args.images, args.size)
        warm = make_images(tmp / "warm", 2, args.size)
        rows = [bench_in_process(files, classifier, segmenter, overlay, tmp)]
        for w in [int(x) for x in args.workers.split(",")]:
            rows.append(bench_node(files, classifier, segmenter, overlay, w, args.clients, tmp, warm))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{args.images} DX images of {args.size} x {args.size} px, SEG + SR" + (" + SC" if overlay else "")
          + f" per image; {args.clients} concurrent associations into the node")
    print(f"{'mode':<34} {'workers':>7} {'images/s':>9} {'p50 ms':>8} {'p90 ms':>8}")
    for r in rows:
        p50, p90 = r.get("receipt_to_queued_p50_ms"), r.get("receipt_to_queued_p90_ms")
        print(f"{r['mode']:<34} {r['workers']:>7} {r['images_per_s']:>9.2f} "
              f"{'' if p50 is None else f'{p50:.0f}':>8} {'' if p90 is None else f'{p90:.0f}':>8}")
    base = rows[0]["images_per_s"]
    for r in rows[1:]:
        print(f"node with {r['workers']} worker(s) / in process: {r['images_per_s'] / base:.2f}x")
    print("(p50 / p90: the node's time from receipt of an image to its results queued for the PACS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
