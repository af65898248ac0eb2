"""A small HTTP backend that answers after a set latency, so HAProxy has instances to weigh.

Two of these run behind HAProxy in the local stack; one is slower, which is what the learned
weights should notice.
"""

from __future__ import annotations

import random
import signal
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


def serve(name: str, host: str, port: int, latency_ms: float) -> None:
    registry = CollectorRegistry()
    requests = Counter("demo_backend_requests", "Requests answered.", ["status"], registry=registry)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes; with Nagle on, the body waits for a delayed ACK
        # (~40 ms) and the backend would look slower than its configured latency.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                return
            if self.path != "/healthz":
                # +-20% jitter keeps the latency distribution realistic without changing its centre.
                time.sleep(latency_ms * random.uniform(0.8, 1.2) / 1000.0)
            requests.labels("200").inc()
            self._reply(200, f"ok from {name}\n".encode(), "text/plain")

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # HAProxy logs every request; a second log here would only duplicate it

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, _exit)
    print(f"demo backend {name} on http://{host}:{port} latency {latency_ms} ms", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def _exit(*_: object) -> None:
    raise SystemExit(0)
