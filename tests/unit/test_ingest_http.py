"""HTTP ingest endpoint: FastAPI TestClient for the API, a real process for SIGTERM handling."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from infra.core.ports import free_port
from infra.core.settings import IngestSettings
from ingest.parsers.base import ParseResult, event_id, reject
from ingest.schemas import AccessEvent, MetricSample, Rejection
from ingest.sources.http_api import _Gunzip, build_http_app

REPO = Path(__file__).resolve().parents[2]
LINE = ('<134>Nov 28 21:59:01 haproxy[23718]: 127.0.0.1:47118 [28/Nov/2026:21:59:01.176] fe be/s1 '
        '0/0/0/6/6 200 500 - - ---- 1/1/0/0/0 0/0 "GET /x1?q=1 HTTP/1.1"')
TOKEN = "s3cret"


class Sink:
    """Both sinks at once: access events, dead letters and metric samples."""

    def __init__(self) -> None:
        self.events: list[AccessEvent] = []
        self.rejections: list[Rejection] = []
        self.samples: list[MetricSample] = []
        self.sample_batches = 0
        self.flushed = 0
        self.fail_flush = False
        self.fail_send = False

    def send_events(self, events: list[AccessEvent]) -> None:
        if self.fail_send:
            raise RuntimeError("spool full")
        self.events += events

    def send_rejection(self, rej: Rejection) -> None:
        self.rejections.append(rej)

    def send_metrics(self, samples: list[MetricSample]) -> None:
        self.samples += samples
        self.sample_batches += 1

    def flush(self, timeout: float | None = None) -> None:
        if self.fail_flush:
            raise TimeoutError("kafka did not acknowledge")
        self.flushed += 1

    def close(self, timeout: float | None = None) -> None:
        pass


class JsonLines:
    """Stands in for the JSON-lines parser: `{"route": ..., "status": ...}`."""

    source = "json"

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult:
        try:
            obj = json.loads(raw)
            return AccessEvent(id=event_id(raw if isinstance(raw, bytes) else raw.encode()), ts=1, service="svc",
                               instance="i1", method="GET", route=obj["route"], status=obj["status"],
                               latency_ms=1.0, bytes_sent=0, source="json")
        except (ValueError, KeyError) as e:
            return reject("json", "bad_json", str(e), raw, received_ms)


class Factory:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, fmt: str) -> JsonLines | object:
        self.asked.append(fmt)
        if fmt == "json":
            return JsonLines()
        if fmt in ("auto", "haproxy"):
            from ingest.parsers.haproxy import HAProxyParser
            return HAProxyParser()
        raise ValueError("no clf parser in this test")


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def factory() -> Factory:
    return Factory()


def make_client(sink: Sink, factory: Factory, **settings: object) -> TestClient:
    app = build_http_app(IngestSettings(**settings), sink, sink, factory)  # type: ignore[arg-type]
    return TestClient(app)


@pytest.fixture
def client(sink: Sink, factory: Factory) -> Iterator[TestClient]:
    with make_client(sink, factory, http_max_body_bytes=100_000) as c:
        yield c


def test_logs_counts_accepted_and_rejected_and_dead_letters_the_rejects(client: TestClient, sink: Sink) -> None:
    body = f"{LINE}\n\ngarbage\n{LINE.replace('/x1', '/x2')}\r\n".encode() + b"\xff\xfe\n"
    r = client.post("/v1/logs", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 2, "rejected": 2, "reasons": {"not_httplog": 1, "bad_encoding": 1},
                        "skipped": 1}
    assert [e.route for e in sink.events] == ["/x1", "/x2"]
    assert sorted(rej.reason for rej in sink.rejections) == ["bad_encoding", "not_httplog"]
    assert sink.flushed == 0  # 202: handed over, not waited for


def test_ndjson_content_type_picks_the_json_parser(client: TestClient, sink: Sink, factory: Factory) -> None:
    body = b'{"route": "/a", "status": 200}\n{"route": "/b"}\n{"route": "/c", "status": 503}\n'
    r = client.post("/v1/logs", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == 2 and r.json()["reasons"] == {"bad_json": 1}
    assert factory.asked == ["json"]
    assert [(e.route, e.status) for e in sink.events] == [("/a", 200), ("/c", 503)]


def test_gzip_body_is_accepted_even_as_concatenated_members(client: TestClient, sink: Sink) -> None:
    body = gzip.compress(f"{LINE}\n".encode()) + gzip.compress(LINE.replace("/x1", "/x2").encode())
    r = client.post("/v1/logs?format=haproxy", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 202 and r.json()["accepted"] == 2
    assert [e.route for e in sink.events] == ["/x1", "/x2"]


def test_wait_flushes_first_and_a_failed_flush_is_503(client: TestClient, sink: Sink) -> None:
    r = client.post("/v1/logs?wait=true", content=LINE)
    assert r.status_code == 200 and sink.flushed == 1
    sink.fail_flush = True
    r = client.post("/v1/logs?wait=true", content=LINE)
    assert r.status_code == 503 and "retry" in r.json()["detail"] and r.headers["retry-after"] == "1"


def test_failing_sink_is_503_not_500(client: TestClient, sink: Sink) -> None:
    sink.fail_send = True
    r = client.post("/v1/logs", content=LINE)
    assert r.status_code == 503 and "spool full" in r.json()["detail"]


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "missing bearer token"),
    ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
    ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token"),
])
def test_token_is_required_when_configured(sink: Sink, factory: Factory, headers: dict[str, str], why: str) -> None:
    with make_client(sink, factory, http_token=TOKEN) as c:
        for path in ("/v1/logs", "/v1/metrics"):
            r = c.post(path, content=LINE, headers=headers)
            assert r.status_code == 401 and why in r.json()["detail"]
            assert "Authorization: Bearer <token>" in r.json()["detail"] or why.startswith("invalid")
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/logs", content=LINE, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202
    assert len(sink.events) == 1


def test_oversize_bodies_are_413_with_the_limit(sink: Sink, factory: Factory) -> None:
    with make_client(sink, factory, http_max_body_bytes=1000) as c:
        r = c.post("/v1/logs", content=b"x" * 1001)
        assert r.status_code == 413 and "1000-byte limit" in r.json()["detail"]
        r = c.post("/v1/logs", content=iter([b"x" * 600, b"x" * 600]))  # chunked: no Content-Length
        assert r.status_code == 413 and "1000-byte limit" in r.json()["detail"]
        bomb = gzip.compress(b"\n" * 5_000_000)  # 5 MB of newlines in a few KB
        assert len(bomb) < 1000 * 10
        r = c.post("/v1/metrics", content=bomb[:900], headers={"Content-Encoding": "gzip"})
        assert r.status_code in (400, 413)  # cut: either truncated gzip, or already over the limit
        small_bomb = gzip.compress(b"\n" * 50_000)
        assert len(small_bomb) < 1000
        r = c.post("/v1/logs", content=small_bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "limit after gunzip" in r.json()["detail"]
    assert sink.events == [] and sink.rejections == []


def test_gunzip_stops_at_the_limit_whatever_the_ratio() -> None:
    g = _Gunzip(10_000)
    with pytest.raises(Exception, match="after gunzip"):
        g.feed(gzip.compress(b"\0" * 50_000_000))
    assert g.size == 10_001  # never more than one byte past the limit held


@pytest.mark.parametrize(("body", "headers", "status", "why"), [
    (b"definitely not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    (gzip.compress(LINE.encode())[:-12], {"Content-Encoding": "gzip"}, 400, "ends early"),
    (LINE.encode(), {"Content-Encoding": "br"}, 415, "'br' is not supported"),
    (b"", {}, 400, "no lines"),
    (b"\n \r\n\n", {}, 400, "no lines"),
    (b'{"route": "/caf\xe9"}\n', {"Content-Type": "application/x-ndjson"}, 400, "not UTF-8"),
])
def test_malformed_log_bodies_are_400_saying_why(client: TestClient, sink: Sink, body: bytes,
                                                  headers: dict[str, str], status: int, why: str) -> None:
    r = client.post("/v1/logs", content=body, headers=headers)
    assert r.status_code == status and why in r.json()["detail"], r.text
    assert sink.events == [] and sink.rejections == []


def test_default_factory_parses_every_format_in_auto(sink: Sink) -> None:
    body = "\n".join([
        LINE,
        '127.0.0.1 - - [28/Nov/2026:21:59:01 +0000] "GET /clf HTTP/1.1" 200 12',
        '{"time": "2026-11-28T21:59:01Z", "method": "GET", "path": "/json", "status": 200, "service": "demo"}',
    ])
    with TestClient(build_http_app(IngestSettings(), sink, sink)) as c:
        r = c.post("/v1/logs", content=body)
        assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
        assert c.post("/v1/logs?format=clf", content=LINE).json()["rejected"] == 1
    assert [e.route for e in sink.events] == ["/x1", "/clf", "/json"]


def test_a_format_the_factory_lacks_is_400(client: TestClient) -> None:
    r = client.post("/v1/logs?format=clf", content=LINE)
    assert r.status_code == 400 and "'clf' is not available" in r.json()["detail"]


def test_metrics_ndjson_accepted_bad_lines_dead_lettered(client: TestClient, sink: Sink) -> None:
    good = {"ts": 1, "service": "demo", "instance": "s1", "name": "cpu", "value": 0.5, "labels": {"core": "0"}}
    body = "\n".join([json.dumps(good), '{"ts": 1, "service": "demo"}', "not json",
                      json.dumps({**good, "name": "mem"})]).encode()
    r = client.post("/v1/metrics", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202
    assert r.json() == {"accepted": 2, "rejected": 2, "reasons": {"bad_metric": 1, "bad_json": 1}, "skipped": 0}
    assert [s.name for s in sink.samples] == ["cpu", "mem"] and sink.samples[0].labels == {"core": "0"}
    assert {(rej.source, rej.reason) for rej in sink.rejections} == {("http_metrics", "bad_metric"),
                                                                     ("http_metrics", "bad_json")}


def test_metrics_prometheus_text(client: TestClient, sink: Sink) -> None:
    text = ('# TYPE haproxy_server_current_sessions gauge\n'
            'haproxy_server_current_sessions{proxy="be",server="s1"} 3\n'
            'haproxy_server_limit_sessions{proxy="be",server="s1"} NaN\n'
            'process_open_fds 12\n')
    r = client.post("/v1/metrics?service=edge&instance=lb1", content=gzip.compress(text.encode()),
                    headers={"Content-Type": "text/plain; version=0.0.4", "Content-Encoding": "gzip"})
    assert r.status_code == 202 and r.json() == {"accepted": 2, "rejected": 0, "reasons": {}, "skipped": 1}
    assert [(s.service, s.instance, s.name, s.value) for s in sink.samples] == [
        ("be", "s1", "haproxy_server_current_sessions", 3.0), ("edge", "lb1", "process_open_fds", 12.0)]


def test_exposition_samples_without_an_instance_are_400_never_the_client_address(client: TestClient,
                                                                                  sink: Sink) -> None:
    """A `server` label or `?instance=` names the instance; without either the body is refused whole."""
    text = ('haproxy_server_current_sessions{proxy="be",server="s1"} 3\n'
            'process_open_fds 12\n')
    r = client.post("/v1/metrics?service=edge", content=text, headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "process_open_fds" in r.json()["detail"] and "instance" in r.json()["detail"]
    assert sink.samples == []
    r = client.post("/v1/metrics", content=text.splitlines()[0])  # every sample has its `server`: fine
    assert r.status_code == 202 and [(s.service, s.instance) for s in sink.samples] == [("be", "s1")]
    assert "testclient" not in {s.instance for s in sink.samples}


def test_ndjson_samples_with_an_empty_instance_are_dead_lettered(client: TestClient, sink: Sink) -> None:
    good = {"ts": 1, "service": "demo", "instance": "s1", "name": "cpu", "value": 0.5}
    body = "\n".join([json.dumps(good), json.dumps({**good, "instance": " "})]).encode()
    r = client.post("/v1/metrics", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202
    assert r.json() == {"accepted": 1, "rejected": 1, "reasons": {"no_instance": 1}, "skipped": 0}
    assert [s.instance for s in sink.samples] == ["s1"]
    assert [(rej.source, rej.reason) for rej in sink.rejections] == [("http_metrics", "no_instance")]


@pytest.mark.parametrize(("body", "why"), [
    (b"caf\xe9 1\n", "not UTF-8"), (b"hello world\n", "not Prometheus text"), (b"  \n", "no lines"),
])
def test_malformed_metrics_are_400(client: TestClient, sink: Sink, body: bytes, why: str) -> None:
    r = client.post("/v1/metrics", content=body)
    assert r.status_code == 400 and why in r.json()["detail"], r.text
    assert sink.samples == []


def test_metrics_are_sent_in_batches_of_batch_max(sink: Sink, factory: Factory) -> None:
    lines = "\n".join(json.dumps({"ts": 1, "service": "s", "instance": "i", "name": f"m{n}", "value": n})
                      for n in range(5))
    with make_client(sink, factory, batch_max=2) as c:
        assert c.post("/v1/metrics", content=lines).json()["accepted"] == 5
    assert sink.sample_batches == 3


def test_openapi_documents_bodies_examples_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    logs = spec["paths"]["/v1/logs"]["post"]
    assert "examples" in logs["requestBody"]["content"]["text/plain"]
    assert {"400", "401", "413", "202"} <= set(logs["responses"])
    assert "application/x-ndjson" in spec["paths"]["/v1/metrics"]["post"]["requestBody"]["content"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert b"foresight_ingest_lines_received" in client.get("/metrics").content


def test_sinks_are_flushed_when_the_app_shuts_down(sink: Sink, factory: Factory) -> None:
    with make_client(sink, factory) as c:
        c.post("/v1/logs", content=LINE)
        assert sink.flushed == 0
    assert sink.flushed == 2  # log sink and metrics sink (the same object here)


SERVER_SCRIPT = """
import sys
from pathlib import Path
from infra.core.settings import IngestSettings
from ingest.sources.http_api import run_http_ingest

out = Path(sys.argv[2])

def note(text):
    with out.open("a") as f:
        f.write(text + "\\n")

class Sink:
    def send_events(self, events): note(f"events {len(events)}")
    def send_rejection(self, rej): note("rejection")
    def send_metrics(self, samples): note(f"samples {len(samples)}")
    def flush(self, timeout=None): note("flush")
    def close(self, timeout=None): pass

run_http_ingest(IngestSettings(http_port=int(sys.argv[1])), Sink(), Sink())
note("returned")
"""


def test_run_http_ingest_serves_then_flushes_and_returns_on_sigterm(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "out.txt"
    script = tmp_path / "serve.py"
    script.write_text(SERVER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(out)], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "server exited early"
            assert time.monotonic() < deadline, "server did not come up"
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/logs", content=LINE, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 202
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.read_text().split("\n")[:-1] == ["events 1", "flush", "flush", "returned"]
