"""Source -> parser -> sink: buffers parsed events briefly so the sink can send them as batch records.

Events leave the buffer every `flush_interval_s` or at `flush_events`, whichever comes first: small
enough a delay for the features window, large enough for records to carry many events each.
Rejections go to the dead-letter topic right away (they are rare and never batched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Protocol
from zoneinfo import ZoneInfo

from prometheus_client import start_http_server

from infra.settings import LOOPBACK, IngestSettings, KafkaSettings
from ingest import metrics
from ingest.parsers.base import LineParser, now_ms
from ingest.parsers.haproxy import HAProxyParser
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.kafka import KafkaSink
from ingest.sources.syslog import SyslogUDPSource

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.1


class EventSink(Protocol):
    def send_events(self, events: list[AccessEvent]) -> None: ...
    def send_rejection(self, rej: Rejection) -> None: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...


class IngestPipeline:
    """Not thread-safe: feed it from one event loop (the syslog source's)."""

    def __init__(self, parser: LineParser, sink: EventSink, *, flush_events: int = 500,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.parser = parser
        self.sink = sink
        self.flush_events = flush_events
        self.flush_interval_s = flush_interval_s
        self._buffer: list[AccessEvent] = []
        self._lines = metrics.LINES_RECEIVED.labels(source=parser.source)

    def on_line(self, raw: bytes) -> None:
        self._lines.inc()
        result = self.parser(raw, now_ms())
        if isinstance(result, Rejection):
            self.sink.send_rejection(result)
            return
        self._buffer.append(result)
        if len(self._buffer) >= self.flush_events:
            self.flush()

    def flush(self) -> None:
        """Hand buffered events to the sink (which sends asynchronously)."""
        if self._buffer:
            events, self._buffer = self._buffer, []
            self.sink.send_events(events)

    async def flush_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.flush_interval_s)
            self.flush()


async def serve_syslog_ingest(ingest: IngestSettings, sink: EventSink, stop: asyncio.Event) -> None:
    """Receive HAProxy syslog on `ingest.syslog_host:port` into `sink` until `stop` is set, then drain."""
    tz = ZoneInfo(ingest.log_timezone) if ingest.log_timezone else None
    pipeline = IngestPipeline(HAProxyParser(tz), sink, flush_events=ingest.batch_max)
    source = SyslogUDPSource(ingest.syslog_host, ingest.syslog_port, pipeline.on_line)
    await source.start()
    log.info("ingest: syslog on udp://%s:%d", *source.address)
    try:
        await pipeline.flush_periodically(stop)
    finally:
        source.close()
        pipeline.flush()
        sink.flush(timeout=10.0)


def run_syslog_ingest(ingest: IngestSettings, kafka: KafkaSettings, *, metrics_addr: str = LOOPBACK) -> None:
    """The `ingest syslog` process: runs until SIGTERM/SIGINT, then sends what it holds and exits."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sink = KafkaSink(kafka, ingest.batch_max)
        try:
            await serve_syslog_ingest(ingest, sink, stop)
        finally:
            sink.close()

    server, thread = start_http_server(ingest.metrics_port, addr=metrics_addr)
    log.info("ingest: metrics on http://%s:%d/metrics", metrics_addr, ingest.metrics_port)
    try:
        asyncio.run(main())
    finally:
        server.shutdown()
        thread.join(timeout=5)
    log.info("ingest: stopped")
