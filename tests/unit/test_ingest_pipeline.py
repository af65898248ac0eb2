"""UDP syslog source and the source -> parser -> sink pipeline, over a real loopback socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime

from infra.core.settings import IngestSettings
from ingest.parsers.haproxy import HAProxyParser
from ingest.pipeline import IngestPipeline, serve_syslog_ingest
from ingest.sources.syslog import SyslogUDPSource, serve_syslog
from tests.unit.fakes import RecordingSink

LINE = (b'<134>Nov 28 21:36:07 haproxy[3905]: 127.0.0.1:40408 [28/Nov/2026:21:36:07.277] fe_demo demo/s1 '
        b'0/0/0/5/5 200 182 - - ---- 1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"')


def line(n: int) -> bytes:
    return LINE.replace(b".277]", f".{n:03d}]".encode())


def send_udp(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))


async def until(cond: Callable[[], object], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_source_splits_datagrams_into_lines() -> None:
    async def main() -> list[bytes]:
        got: list[bytes] = []
        source = await serve_syslog("127.0.0.1", 0, got.append)
        try:
            _, port = source.address
            send_udp(port, b"one\n", b"two\r\nthree\n\n", b"four")
            await until(lambda: len(got) == 4)
        finally:
            source.close()
        return got

    assert asyncio.run(main()) == [b"one", b"two\r", b"three", b"four"]


def test_source_survives_a_failing_callback() -> None:
    async def main() -> list[bytes]:
        got: list[bytes] = []

        def on_line(raw: bytes) -> None:
            if raw == b"boom":
                raise RuntimeError("bad handler")
            got.append(raw)

        source = SyslogUDPSource("127.0.0.1", 0, on_line)
        await source.start()
        try:
            send_udp(source.address[1], b"boom\nafter", b"later")
            await until(lambda: len(got) == 2)
        finally:
            source.close()
        return got

    assert asyncio.run(main()) == [b"after", b"later"]


def test_pipeline_buffers_events_and_sends_rejections_at_once() -> None:
    sink = RecordingSink()
    pipeline = IngestPipeline(HAProxyParser(), sink, flush_events=3)
    pipeline.on_line(line(1))
    pipeline.on_line(b"garbage")
    pipeline.on_line(line(2))
    assert sink.batches == [] and [r.reason for r in sink.rejections] == ["not_httplog"]
    pipeline.on_line(line(3))
    assert [len(b) for b in sink.batches] == [3]
    pipeline.on_line(line(4))
    pipeline.flush()
    pipeline.flush()  # nothing left: no empty batch
    assert [len(b) for b in sink.batches] == [3, 1]


def test_pipeline_flushes_on_its_interval() -> None:
    async def main() -> RecordingSink:
        sink = RecordingSink()
        pipeline = IngestPipeline(HAProxyParser(), sink, flush_events=1000, flush_interval_s=0.02)
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.flush_periodically(stop))
        pipeline.on_line(line(1))
        await until(lambda: sink.batches)
        stop.set()
        await task
        return sink

    assert [len(b) for b in asyncio.run(main()).batches] == [1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_syslog_ingest_end_to_end_and_drains_on_stop() -> None:
    port = free_udp_port()
    settings = IngestSettings(syslog_port=port, batch_max=500, log_timezone="America/New_York")

    async def main() -> RecordingSink:
        sink = RecordingSink()
        stop = asyncio.Event()
        task = asyncio.create_task(serve_syslog_ingest(settings, sink, stop))
        await asyncio.sleep(0.05)
        send_udp(port, line(1) + b"\n" + line(2) + b"\n", b"\xff\xfe", line(3) + b"\n")
        await until(lambda: sum(map(len, sink.batches)) == 3 and sink.rejections)
        send_udp(port, line(4))
        await asyncio.sleep(0.02)
        stop.set()
        await task
        return sink

    sink = asyncio.run(main())
    events = [e for b in sink.batches for e in b]
    assert [e.ts % 1000 for e in events] == [1, 2, 3, 4]
    assert events[0].ts // 1000 == datetime(2026, 11, 29, 2, 36, 7, tzinfo=UTC).timestamp()  # 21:36:07 EST
    assert [r.reason for r in sink.rejections] == ["bad_encoding"]
    assert sink.flushed == 1
