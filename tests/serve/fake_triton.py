"""A stand-in for a Triton server on loopback that answers health and model-config requests as
Triton's HTTP API does and lets inference requests hang: a server that stopped answering."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeTriton:
    """``with FakeTriton(facts) as fake: fake.url``; ``fake.authorizations`` lists the
    Authorization headers received; inference requests wait ``stall_s`` and get no answer."""

    def __init__(self, facts: dict, model: str = "covidedge", stall_s: float = 30.0):
        self.facts, self.model, self.stall_s = facts, model, stall_s
        self.authorizations = []
        self.infer_requests = 0
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, doc):
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                owner.authorizations.append(self.headers.get("Authorization"))
                if self.path.startswith("/v2/health/ready"):
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path.startswith(f"/v2/models/{owner.model}/config"):
                    self._json({"name": owner.model, "parameters": {
                        "covidedge": {"string_value": json.dumps(owner.facts)}}})
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def do_POST(self):
                owner.authorizations.append(self.headers.get("Authorization"))
                owner.infer_requests += 1
                owner._stop.wait(owner.stall_s)  # never answers in time

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeTriton":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
