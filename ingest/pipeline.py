"""Source -> parser -> sink: buffers parsed events briefly so the sink can send them as batch records.

Events leave the buffer every `flush_interval_s` or at `flush_events`, whichever comes first: small
enough a delay for the features window, large enough for records to carry many events each.
Rejections go to the dead-letter topic right away (they are rare and never batched).
Identical lines are numbered apart (`Occurrences`) over the pipeline's life: UDP re-sends nothing,
so that only keeps twins (two requests logged alike) apart; after a restart a line identical to
one just before it takes that one's id (merged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from zoneinfo import ZoneInfo

from infra.core.settings import IngestSettings
from ingest import metrics
from ingest.parsers.base import LineParser, Occurrences, now_ms
from ingest.parsers.haproxy import HAProxyParser
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.base import EventSink
from ingest.sinks.kafka import BackPressure
from ingest.sources.syslog import SyslogUDPSource

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.1
MAX_HELD_EVENTS = 100_000  # held under back-pressure before the oldest are dropped (and counted)


class IngestPipeline:
    """Not thread-safe: feed it from one event loop (the syslog source's)."""

    def __init__(self, parser: LineParser, sink: EventSink, *, flush_events: int = 500,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.parser = parser
        self.sink = sink
        self.flush_events = flush_events
        self.flush_interval_s = flush_interval_s
        self._buffer: list[AccessEvent] = []
        self._held = False  # the sink pushed back: only the periodic flush retries
        self._lines = metrics.LINES_RECEIVED.labels(source=parser.source)
        self._distinct = Occurrences()

    def on_line(self, raw: bytes) -> None:
        self._lines.inc()
        result = self.parser(raw, now_ms())
        if isinstance(result, Rejection):
            self.sink.send_rejection(result)
            return
        self._buffer.append(self._distinct(result))
        if len(self._buffer) >= self.flush_events and not self._held:
            self.flush()

    def flush(self) -> None:
        """Hand buffered events to the sink (which sends asynchronously).

        The buffer is emptied only once the sink took the events: under back-pressure they stay
        and are offered again on the next flush (UDP cannot push back; the kernel drops instead).
        """
        if self._buffer:
            try:
                self.sink.send_events(self._buffer)
            except BackPressure as exc:
                self._held = True
                excess = len(self._buffer) - MAX_HELD_EVENTS
                if excess > 0:
                    del self._buffer[:excess]
                    metrics.EVENTS_DROPPED.labels("backpressure").inc(excess)
                log.warning("ingest: sink back-pressure, holding %d events (%d dropped): %s",
                            len(self._buffer), max(excess, 0), exc)
                return
            self._buffer = []
            self._held = False

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
