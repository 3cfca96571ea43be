#!/usr/bin/env python
"""In-process inference against a Triton server, with and without dynamic batching, in one run.

For the given classifier and segmenter (ONNX models or engines), on one X-ray PNG:

- in process: ``Pipeline.predict`` one image at a time (what ``covidedge infer`` does per image);
- Triton, dynamic batching on: a ``--target cpu`` repository served by ``covidedge serve``'s
  bundled tritonserver, the PNG bytes sent to the ensemble by 1 and by 8 concurrent clients;
- Triton, dynamic batching off: the same repository written with ``--no-dynamic-batching``.

Each client sends ``--requests`` requests after a warm-up; the table gives throughput
(images/s over the wall time of all clients), p50 and p99 latency per request (ms), and the
ratios within this run: batching on / off at 8 clients, and the server against in process.
Needs the serve extra (pip install 'covidedge[serve]') and a numpy<2 Python for the python stub.

Example (about a minute with small models on a 2-core CPU):
    python benchmarks/triton_serving.py --classifier build/cls.onnx --segmenter build/seg.onnx \\
        --image xray.png --requests 50
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: List[float], q: float) -> float:
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q / 100.0 * (len(v) - 1)))))
    return v[k]


def _row(name: str, clients: int, latencies_ms: List[float], wall_s: float) -> Dict[str, object]:
    return {"mode": name, "clients": clients, "images_per_s": len(latencies_ms) / wall_s,
            "p50_ms": statistics.median(latencies_ms), "p99_ms": _percentile(latencies_ms, 99)}


def bench_in_process(classifier, segmenter, image: Path, requests: int, warmup: int) -> Dict[str, object]:
    from covidedge.runtime.pipeline import Pipeline

    lat = []
    with Pipeline(classifier=classifier, segmenter=segmenter) as pipe:
        for _ in range(warmup):
            pipe.predict(image)
        t0 = time.perf_counter()
        for _ in range(requests):
            t = time.perf_counter()
            pipe.predict(image)
            lat.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - t0
    return _row("in process", 1, lat, wall)


def bench_server(url: str, data: bytes, clients: int, requests: int, warmup: int, name: str) -> Dict[str, object]:
    import numpy as np

    from covidedge.serve.client import ServerClient

    outputs = ["LABEL", "PROBABILITIES", "LUNG_MASK", "INFECTION_MASK", "LUNG_FRACTION", "INFECTED_FRACTION"]
    feed = {"IMAGE": np.array([[data]], dtype=object)}
    lat: List[List[float]] = [[] for _ in range(clients)]
    errors: List[str] = []
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with ServerClient(url) as c:
            for _ in range(warmup):
                c.infer("covidedge", feed, outputs)
            start.wait()
            for _ in range(requests):
                t = time.perf_counter()
                try:
                    c.infer("covidedge", feed, outputs)
                except Exception as exc:
                    errors.append(repr(exc))
                lat[k].append((time.perf_counter() - t) * 1e3)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first: {errors[0]}")
    return _row(name, clients, [x for per in lat for x in per], wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", required=True, help="classifier ONNX model or engine")
    ap.add_argument("--segmenter", required=True, help="segmenter ONNX model or engine")
    ap.add_argument("--image", required=True, type=Path, help="an X-ray image file sent as bytes")
    ap.add_argument("--requests", type=int, default=50, help="timed requests per client")
    ap.add_argument("--warmup", type=int, default=5, help="untimed requests per client first")
    ap.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated")
    ap.add_argument("--scheme", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay")
    args = ap.parse_args(argv)

    from covidedge.serve.repository import write_repository
    from covidedge.serve.server import TritonServer

    clients = [int(c) for c in args.clients.split(",")]
    data = args.image.read_bytes()
    rows = [bench_in_process(args.classifier, args.segmenter, args.image, args.requests, args.warmup)]
    with tempfile.TemporaryDirectory(prefix="covidedge-bench-triton-") as tmp:
        for batching in (True, False):
            repo = write_repository(Path(tmp) / f"repo-{int(batching)}", args.classifier, args.segmenter,
                                    dynamic_batching=batching, queue_delay_us=args.queue_delay_us)
            ports = {k: _free_port() for k in ("http", "grpc", "metrics")}
            with TritonServer(repo.path, http_port=ports["http"], grpc_port=ports["grpc"],
                              metrics_port=ports["metrics"]) as server:
                t0 = time.perf_counter()
                server.wait_ready()
                print(f"# server with dynamic batching {'on' if batching else 'off'} ready in "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
                url = server.endpoints[args.scheme]
                for n in clients:
                    rows.append(bench_server(url, data, n, args.requests, args.warmup,
                                             f"Triton, dynamic batching {'on' if batching else 'off'}"))

    print("| mode | clients | images/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} | {r['images_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    by = {(r["mode"], r["clients"]): r["images_per_s"] for r in rows}
    top = max(clients)
    on, off = by.get(("Triton, dynamic batching on", top)), by.get(("Triton, dynamic batching off", top))
    if on and off:
        print(f"\ndynamic batching on / off at {top} clients: {on / off:.2f}x throughput")
    if on:
        print(f"Triton (batching on, {top} clients) / in process (1 image at a time): "
              f"{on / by[('in process', 1)]:.2f}x throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
