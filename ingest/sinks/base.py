"""What every ingest source writes to: the sink protocols (the Kafka sink is the real one)."""

from __future__ import annotations

from typing import Protocol

from ingest.schemas import AccessEvent, MetricSample, Rejection


class EventSink(Protocol):
    """Access events and rejections; `send_*` may raise `BackPressure` (all or nothing)."""

    def send_events(self, events: list[AccessEvent]) -> None: ...
    def send_rejection(self, rej: Rejection) -> None: ...
    def flush(self, timeout: float | None = None) -> None: ...


class MetricSink(Protocol):
    """Where metric samples go (`fs.metrics`); `send_metrics` must not block for long."""

    def send_metrics(self, samples: list[MetricSample]) -> None: ...
    def flush(self, timeout: float | None = None) -> None: ...
