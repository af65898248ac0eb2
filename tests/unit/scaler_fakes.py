"""HTTP fakes of what a scaler talks to, recording every request: the Kubernetes API's
`deployments/{name}/scale` (no API server can run here) and the pool's admin API (the real pool is
tested in its own suite; this fake answers its JSON contract so the scaler's I/O can be checked alone)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str | None
    body: Any


@dataclass
class FakeState:
    requests: list[Recorded] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)  # deployment or service -> spec replicas
    existing: dict[str, int] = field(default_factory=dict)  # pods / processes that exist
    ready: dict[str, int] = field(default_factory=dict)


SCALE_PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)/scale$")
POOL_PATH = re.compile(r"^/v1/pools/(?P<service>[^/]+)(?P<replicas>/replicas)?$")


def _handler(state: FakeState, route: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            path = self.path.split("?", 1)[0]
            state.requests.append(Recorded(self.command, path, self.headers.get("Content-Type"), body))
            status, answer = route(state, self.command, path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_PUT = _serve

    return Handler


def _kube_route(state: FakeState, method: str, path: str, body: Any) -> tuple[int, Any]:
    m = SCALE_PATH.match(path)
    if not m or m["name"] not in state.replicas:
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f'deployments.apps "{m["name"] if m else path}" not found'}
    name, ns = m["name"], m["ns"]
    if method == "PATCH":
        state.replicas[name] = int(body["spec"]["replicas"])
    elif method != "GET":
        return 405, {"kind": "Status", "code": 405, "message": "method not allowed"}
    return 200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                 "metadata": {"name": name, "namespace": ns},
                 "spec": {"replicas": state.replicas[name]},
                 "status": {"replicas": state.existing.get(name, state.replicas[name]), "selector": f"app={name}"}}


def _pool_route(state: FakeState, method: str, path: str, body: Any) -> tuple[int, Any]:
    m = POOL_PATH.match(path)
    if not m or m["service"] not in state.replicas:
        return 404, {"detail": f"no pool for {path}"}
    service = m["service"]
    if m["replicas"] and method == "PUT":
        if not isinstance(body, dict) or not isinstance(body.get("replicas"), int) or body["replicas"] < 0:
            return 422, {"detail": "replicas must be an integer >= 0"}
        state.replicas[service] = body["replicas"]
        code = 202
    elif not m["replicas"] and method == "GET":
        code = 200
    else:
        return 405, {"detail": "method not allowed"}
    current = state.existing.get(service, state.replicas[service])
    return code, {"service": service, "desired": state.replicas[service], "current": current,
                  "ready": state.ready.get(service, current), "instances": []}


@contextmanager
def _serve(route: Any) -> Iterator[tuple[str, FakeState]]:
    state = FakeState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, route))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def fake_kubernetes_api() -> Any:
    """A fake Kubernetes API server: only GET/PATCH of deployments/{name}/scale."""
    return _serve(_kube_route)


def fake_pool_admin() -> Any:
    """A fake of the pool's admin API (`GET /v1/pools/{s}`, `PUT /v1/pools/{s}/replicas`)."""
    return _serve(_pool_route)
