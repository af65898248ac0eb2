"""The stream worker's ClickHouse writer: a refused write is counted, retried with what is pending
then, and only an acknowledged write leaves the state (ClickHouse itself: a sink that refuses)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tenacity import AsyncRetrying

from infra.core import retry
from infra.core.settings import KafkaSettings, StreamSettings
from streams import app as stream_app
from streams.app import FeatureStream
from streams.schemas import FeatureWindow
from streams.state import window_id

WINDOW = FeatureWindow(window_start=60_000, window_end=120_000, service="demo", instance="s1", requests=3, rate=0.05,
                       latency_p50_ms=1.0, latency_p90_ms=2.0, latency_p99_ms=3.0, bytes_sent=30,
                       emitted_at=121_000).model_dump()


class RefusingSink:
    """Refuses the first `refusals` writes, as ClickHouse does while it is down."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.writes: list[list[FeatureWindow]] = []

    def write(self, windows: list[FeatureWindow]) -> None:
        self.writes.append(windows)
        if len(self.writes) <= self.refusals:
            raise ConnectionError("ClickHouse down")


def test_a_refused_write_is_counted_and_retried_until_clickhouse_takes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = RefusingSink(refusals=2)
    stream = FeatureStream(StreamSettings(), KafkaSettings(bootstrap_servers="127.0.0.1:1"), sink,  # type: ignore[arg-type]
                           tmp_path)
    sleeps: list[float] = []

    async def no_wait(seconds: float) -> None:
        sleeps.append(seconds)

    real_policy = retry.until_stored

    def policy() -> AsyncRetrying:
        return real_policy().copy(sleep=no_wait)

    monkeypatch.setattr(stream_app.retry, "until_stored", policy)
    monkeypatch.setattr(stream_app, "pending_windows", lambda _states: [WINDOW])
    acknowledged: list[list[dict[str, Any]]] = []

    async def acknowledge(batch: list[dict[str, Any]]) -> None:
        acknowledged.append(batch)

    monkeypatch.setattr(stream, "_acknowledge", acknowledge)
    stream._published.add(window_id(WINDOW))

    async def main() -> None:
        writer = asyncio.ensure_future(stream._write_clickhouse())
        stream._wake.set()
        for _ in range(200):
            if acknowledged:
                break
            await asyncio.sleep(0.01)
        writer.cancel()

    asyncio.run(main())
    assert [[w.model_dump() for w in ws] for ws in sink.writes] == [[WINDOW]] * 3
    assert acknowledged == [[WINDOW]]
    assert sleeps == [retry.STORE_WRITE_EVERY_S] * 2
    assert stream.metrics.registry.get_sample_value("foresight_stream_sink_errors_total") == 2
    assert stream.metrics.registry.get_sample_value("foresight_stream_windows_emitted_total") == 1
