"""The Faust app that turns `fs.access` into closed feature windows on `fs.features` and in ClickHouse.

Events are pulled in batches (`stream.take`) and aggregated locally; producers already key by
service/instance, so no repartitioning (`group_by`) is needed. Consumer-group timeouts come from
the settings: Tansu holds a join for half the session timeout, 30 s with Faust's defaults.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust

from infra.settings import KafkaSettings, StreamSettings
from ingest.schemas import Rejection, decode_access_record, truncate_raw
from streams.metrics import StreamMetrics
from streams.schemas import FeatureWindow
from streams.sinks.clickhouse import FeatureSink
from streams.windows import WindowAggregator

log = logging.getLogger("foresight.streams")


def faust_broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap_servers.split(","))


class FeatureStream:
    def __init__(self, cfg: StreamSettings, kafka: KafkaSettings, sink: FeatureSink, data_dir: Path,
                 metrics: StreamMetrics | None = None, clock: Callable[[], float] = time.time,
                 started_at: float | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.clock = clock
        self.started_at = started_at or time.monotonic()
        self.metrics = metrics or StreamMetrics()
        self.agg = WindowAggregator(cfg.window_s, cfg.allowed_lateness_s)
        self.unsent: list[FeatureWindow] = []
        self.last_event_wall = 0.0
        self._seen_first_event = False
        self._emit_lock = asyncio.Lock()
        self.app = faust.App(
            cfg.app_id,
            broker=faust_broker_url(kafka.bootstrap_servers),
            store="memory://",
            web_enabled=False,
            datadir=str(data_dir),
            topic_partitions=kafka.partitions,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=cfg.session_timeout_s,
            broker_heartbeat_interval=cfg.heartbeat_interval_s,
            broker_rebalance_timeout=cfg.rebalance_timeout_s,
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.access = self.app.topic(kafka.topic_access, **raw)
        self.features = self.app.topic(kafka.topic_features, **raw)
        self.dlq = self.app.topic(kafka.topic_dlq, **raw)
        self.app.agent(self.access, name=f"{cfg.app_id}.windows")(self._process)
        self.app.timer(interval=0.5, name=f"{cfg.app_id}.idle-close")(self._tick)
        self.app.task(self._on_start)

    async def _on_start(self) -> None:
        self.metrics.ready.set(1)
        self.metrics.startup_seconds.set(time.monotonic() - self.started_at)
        log.info("stream worker ready %.1f s after start", time.monotonic() - self.started_at)

    async def _process(self, stream: Any) -> None:
        async for values in stream.take(self.cfg.take_max, within=self.cfg.take_within_s):
            if not self._seen_first_event:
                self._seen_first_event = True
                self.metrics.first_event_seconds.set(time.monotonic() - self.started_at)
                log.info("first event processed %.1f s after start", time.monotonic() - self.started_at)
            self.metrics.records.inc(len(values))
            for value in values:
                await self._add_record(value)
            self.last_event_wall = self.clock()
            await self._emit(self.agg.watermark())

    async def _add_record(self, value: bytes) -> None:
        try:
            events = decode_access_record(value)
        except (ValueError, TypeError) as exc:
            await self._reject(value, "bad_record", str(exc))
            return
        for ev in events:
            try:
                late = self.agg.add_events([ev])
            except (KeyError, TypeError, ValueError) as exc:
                await self._reject(value, "bad_event", f"{type(exc).__name__}: {exc}")
                continue
            self.metrics.events.inc()
            if late:
                self.metrics.late.inc(late)

    async def _reject(self, raw: bytes, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        rej = Rejection(source="streams", reason=reason, detail=detail[:500], raw=truncate_raw(raw),
                        ts_received=int(self.clock() * 1000))
        await self.dlq.send(key=b"streams", value=rej.model_dump_json().encode())

    async def _tick(self) -> None:
        """Close windows by wall clock when the stream is idle, and retry unsent windows."""
        now = self.clock()
        if self.agg.open_windows and now - self.last_event_wall >= self.cfg.idle_close_s:
            await self._emit(self.agg.watermark(int(now * 1000)))
        elif self.unsent:
            await self._emit(None)

    async def _emit(self, watermark: int | None) -> None:
        async with self._emit_lock:
            if watermark is not None:
                windows = self.agg.close(watermark, emitted_at=int(self.clock() * 1000))
                for w in windows:
                    await self.features.send(key=w.key.encode(), value=w.model_dump_json().encode())
                self.unsent.extend(windows)
            self.metrics.open_windows.set(self.agg.open_windows)
            if not self.unsent:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.sink.write, self.unsent)
            except Exception as exc:  # ClickHouse down or refusing: keep the windows, retry on the next tick
                self.metrics.sink_errors.inc()
                log.warning("ClickHouse write of %d windows failed, will retry: %s", len(self.unsent), exc)
            else:
                self.metrics.windows.inc(len(self.unsent))
                self.unsent = []
            self.metrics.unsent.set(len(self.unsent))
