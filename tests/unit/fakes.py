"""Fakes for unit tests: stand-ins for the Kafka sink, which the integration tests cover for real."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.kafka import BackPressure


@dataclass
class RecordingSink:
    """A fake `EventSink` that keeps what it is given; its first `refusals` sends push back
    the way a full spool does (`BackPressure`, nothing of the call taken)."""

    batches: list[list[AccessEvent]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    flushed: int = 0
    refusals: int = 0

    def send_events(self, events: list[AccessEvent]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise BackPressure(waited_s=0.0, spool_bytes=1, spool_max_bytes=1)
        self.batches.append(events)

    def send_rejection(self, rej: Rejection) -> None:
        self.rejections.append(rej)

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1

    def close(self, timeout: float | None = None) -> None:
        pass
