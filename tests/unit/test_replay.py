"""Trace replay: streaming the trace, pacing, the rate cap, real HTTP on loopback, and Kafka via a fake sink."""

from __future__ import annotations

import bz2
import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.core.datasets import NASA_RPS as NASA_RPS_NAME
from infra.core.datasets import dataset_path
from ingest import replay as replay_mod
from ingest.replay import _Pacer, read_trace, replay
from ingest.schemas import AccessEvent, Rejection

NASA_RPS = dataset_path(NASA_RPS_NAME)


class FakeSink:
    """In-memory stand-in for KafkaSink (the real one is tested in test_ingest_kafka_sink)."""

    def __init__(self) -> None:
        self.events: list[AccessEvent] = []
        self.batches = 0
        self.rejections: list[Rejection] = []
        self.flushes = 0

    def send_events(self, events: list[AccessEvent]) -> None:
        self.batches += 1
        self.events.extend(events)

    def send_rejection(self, rej: Rejection) -> None:
        self.rejections.append(rej)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        with server.lock:
            server.paths.append(self.path)
        body = b"ok"
        self.send_response(server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = status
        self.paths: list[str] = []
        self.lock = threading.Lock()


def serve(status: int) -> Iterator[_Server]:
    server = _Server(status)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_ok() -> Iterator[_Server]:
    yield from serve(200)


@pytest.fixture
def http_500() -> Iterator[_Server]:
    yield from serve(500)


def trace(tmp_path: Path, values: list[int], name: str = "t.txt", sep: str = " ") -> Path:
    body = sep.join(map(str, values)).encode() + b"\n"
    path = tmp_path / name
    if name.endswith(".bz2"):
        body = bz2.compress(body)
    elif name.endswith(".gz"):
        body = gzip.compress(body)
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("name", ["t.txt", "t.txt.gz", "t.txt.bz2"])
def test_read_trace_streams_across_chunks(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_mod, "_CHUNK", 7)  # numbers split between chunks
    values = [i * 37 % 1000 for i in range(500)]
    path = trace(tmp_path, values, name)
    assert list(read_trace(path)) == values
    assert list(read_trace(path, start=495)) == values[495:]
    assert list(read_trace(path, start=10_000)) == []
    assert list(read_trace(trace(tmp_path, values, "n.txt", sep="\n"))) == values


def test_read_trace_rejects_what_is_not_a_count(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"1 2 x3 4")
    with pytest.raises(ValueError, match="value 2 is not a count"):
        list(read_trace(path))


def test_read_trace_nasa_head_and_august_start() -> None:
    head = read_trace(NASA_RPS)
    assert [next(head) for _ in range(12)] == [1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 2, 3]
    head.close()  # a generator: closes the file


def test_pacer_spreads_slots_and_caps_the_rate() -> None:
    assert list(_Pacer(iter([3, 0, 5]), speedup=2.0, max_rps=None)) == [(0, 0.0, 3), (1, 0.5, 0), (2, 1.0, 5)]
    capped = _Pacer(iter([10] * 8), speedup=1.0, max_rps=4)
    sent = [n for _, _, n in capped]
    assert sent == [4] * 8
    assert capped.dropped == 48
    # A quiet stretch does not buy a burst: the bucket holds one slot's worth (+1).
    bursty = _Pacer(iter([0] * 20 + [100]), speedup=10.0, max_rps=20)
    assert [n for _, _, n in bursty][-1] == 3


def test_http_replay_sends_the_trace_paced(tmp_path: Path, http_ok: _Server) -> None:
    path = trace(tmp_path, [3, 0, 2, 5])
    started = time.monotonic()
    summary = replay(path, speedup=20.0, to="http", base_url=f"http://127.0.0.1:{http_ok.server_port}/x")
    elapsed = time.monotonic() - started
    assert (summary.seconds_replayed, summary.requests_sent, summary.errors, summary.dropped_by_cap) == (4, 10, 0, 0)
    assert summary.statuses == {200: 10}
    assert http_ok.paths == ["/x"] * 10
    assert elapsed >= 0.15  # the 4th trace second starts 3/20 s in: paced, not a burst
    assert summary.wall_s >= 0.15 and summary.achieved_rps == pytest.approx(10 / summary.wall_s)
    d = summary.as_dict()
    assert d["requests_sent"] == 10 and d["achieved_rps"] > 0
    assert len(summary.answers) == 10 and not any(failed for _, _, failed in summary.answers)
    assert 0 < d["latency_p50_ms"] <= d["latency_p99_ms"] and "answers" not in d


def test_http_replay_counts_5xx_and_transport_errors(tmp_path: Path, http_500: _Server) -> None:
    path = trace(tmp_path, [4, 4])
    summary = replay(path, speedup=50.0, to="http", base_url=f"http://127.0.0.1:{http_500.server_port}/")
    assert (summary.requests_sent, summary.errors, summary.statuses) == (8, 8, {500: 8})
    assert [failed for _, _, failed in summary.answers] == [True] * 8
    with _Server(200) as closed:
        port = closed.server_port  # bound then closed: nothing listens
    refused = replay(path, speedup=50.0, to="http", base_url=f"http://127.0.0.1:{port}/")
    assert (refused.requests_sent, refused.errors, refused.statuses) == (8, 8, {})


def test_http_replay_bounds(tmp_path: Path, http_ok: _Server) -> None:
    path = trace(tmp_path, [1] * 1000 + [7, 7])
    summary = replay(path, speedup=50.0, to="http", base_url=f"http://127.0.0.1:{http_ok.server_port}/",
                     duration_s=0.3)
    assert 10 <= summary.seconds_replayed <= 16 and summary.requests_sent == summary.seconds_replayed
    assert summary.wall_s < 1.5
    capped = replay(path, speedup=10.0, to="http", base_url=f"http://127.0.0.1:{http_ok.server_port}/",
                    start=1000, max_rps=30)
    assert (capped.seconds_replayed, capped.requests_sent, capped.dropped_by_cap) == (2, 6, 8)
    assert len(http_ok.paths) == summary.requests_sent + 6


def test_kafka_replay_produces_parsed_synthetic_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_mod, "SEND_EVENTS", 4)
    monkeypatch.setattr(replay_mod, "SEND_INTERVAL_S", 60.0)
    values = [3, 0, 20, 1, 6]
    sink = FakeSink()
    before = time.time() * 1000
    summary = replay(trace(tmp_path, values), speedup=1000.0, to="kafka", sink=sink)
    assert (summary.seconds_replayed, summary.requests_sent, summary.errors) == (5, 30, 0)
    assert len(sink.events) == 30 and sink.flushes == 1 and not sink.rejections
    assert sink.batches == 2  # sent when 4 were held (after 3+0+20, and 1+6), not one record per second
    assert len({e.id for e in sink.events}) == 30  # no two synthetic lines share an id
    assert all(e.source == "clf" and e.service == "replay" and e.latency_ms > 0 for e in sink.events)
    assert all(before - 1000 <= e.ts <= time.time() * 1000 for e in sink.events)  # event time: now
    for e in sink.events:
        AccessEvent.model_validate_json(e.model_dump_json())


def test_kafka_replay_start_duration_and_cap(tmp_path: Path) -> None:
    path = trace(tmp_path, [5, 1, 2, 3] + [1] * 1000)
    bounded = replay(path, speedup=20.0, to="kafka", sink=FakeSink(), start=1, duration_s=0.175)
    assert (bounded.seconds_replayed, bounded.requests_sent) == (4, 1 + 2 + 3 + 1)  # slots at 0, 50, 100, 150 ms
    assert bounded.wall_s < 0.5
    # 1.5 tokens a slot, at most 2.5 held: 5 -> 1, 1 -> 1, 2 -> 2, 3 -> 2.
    capped = replay(trace(tmp_path, [5, 1, 2, 3], "c.txt"), speedup=1.0e6, to="kafka", sink=FakeSink(),
                    max_rps=1.5e6)
    assert (capped.seconds_replayed, capped.requests_sent, capped.dropped_by_cap) == (4, 6, 5)


def test_synthetic_lines_parse_as_combined_with_latency() -> None:
    import random

    from ingest.parsers.clf import CLFParser
    from ingest.routing import Router

    line = replay_mod.synthetic_line(random.Random(0), "10/Oct/2000:13:55:36 -0700", 42, 7)
    assert b"?r=42.7 " in line
    e = CLFParser(Router([], "s"))(line, 0)
    assert isinstance(e, AccessEvent) and e.latency_ms > 0 and e.route.startswith("/")


def test_bad_arguments(tmp_path: Path) -> None:
    path = trace(tmp_path, [1])
    with pytest.raises(ValueError, match="base_url"):
        replay(path, to="http")
    with pytest.raises(ValueError, match="sink"):
        replay(path, to="kafka")
    with pytest.raises(ValueError, match="speedup"):
        replay(path, speedup=0, to="kafka", sink=FakeSink())
    with pytest.raises(ValueError, match="unknown target"):
        replay(path, to="udp", sink=FakeSink())  # type: ignore[arg-type]


def test_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = replay(trace(tmp_path, [2, 2]), speedup=100.0, to="kafka", sink=FakeSink(), progress=True)
    assert summary.requests_sent == 4
    captured = capsys.readouterr()
    assert captured.out == "" and "replay" in captured.err


def test_scale_multiplies_the_trace_and_keeps_its_mean() -> None:
    from ingest.replay import _scaled

    def trace() -> Iterator[int]:
        yield from [10] * 1000

    scaled = list(_scaled(trace(), 0.25))
    assert set(scaled) == {2, 3} and sum(scaled) == pytest.approx(2500, rel=0.03)
    assert list(_scaled(iter([4, 0, 7]), 3.0)) == [12, 0, 21]
    with pytest.raises(ValueError, match="scale must be positive"):
        replay(dataset_path(NASA_RPS_NAME), scale=0, base_url="http://127.0.0.1:9")
