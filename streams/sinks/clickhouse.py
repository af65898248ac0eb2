"""Writes closed feature windows to ClickHouse `features` in one insert per batch."""

from __future__ import annotations

from datetime import UTC, datetime

from clickhouse_driver import Client

from streams.schemas import FeatureWindow

COLUMNS = (
    "window_start", "window_end", "service", "instance", "requests", "rate", "status_2xx", "status_3xx",
    "status_4xx", "status_5xx", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "bytes_sent",
    "sessions_max", "queue_max", "conn_errors", "resource_max", "busy_max", "busy_mean", "late_events",
    "emitted_at",
)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class FeatureSink:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.statement = f"INSERT INTO {database}.features ({', '.join(COLUMNS)}) VALUES"

    def write(self, windows: list[FeatureWindow]) -> None:
        rows = [
            (_dt(w.window_start), _dt(w.window_end), w.service, w.instance, w.requests, w.rate, w.status_2xx,
             w.status_3xx, w.status_4xx, w.status_5xx, w.latency_p50_ms, w.latency_p90_ms, w.latency_p99_ms,
             w.bytes_sent, w.sessions_max, w.queue_max, w.conn_errors, w.resource_max, w.busy_max, w.busy_mean,
             w.late_events, w.emitted_at)
            for w in windows
        ]
        if rows:
            self.client.execute(self.statement, rows)
