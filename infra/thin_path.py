"""Drives traffic through the stack and watches each hop: used by `foresight demo` and its test.

Each request carries a run marker in its path, so this run's events are told apart from any
other traffic the stack carries.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from kafka import TopicPartition

from infra.core.db import client as clickhouse_client
from infra.core.kafka_admin import kafka_consumer
from infra.core.settings import KafkaSettings, Settings
from ingest.schemas import decode_access_record


@dataclass
class Burst:
    marker: str
    sent: int
    statuses: dict[int, int]
    start_ms: int
    end_ms: int

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


@dataclass
class Hop:
    name: str
    ok: bool
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


def end_offsets(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    consumer = kafka_consumer(kafka, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def read_records(kafka: KafkaSettings, topic: str, offsets: dict[int, int], until: Callable[[list[Any]], bool],
                 timeout_s: float) -> list[Any]:
    """Records of `topic` after `offsets` until `until(records)` holds or the time is up."""
    consumer = kafka_consumer(kafka, enable_auto_commit=False)
    records: list[Any] = []
    try:
        parts = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, offsets[tp.partition])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(records):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def send_burst(s: Settings, requests: int, concurrency: int = 8) -> Burst:
    marker = uuid.uuid4().hex[:10]
    url = f"http://127.0.0.1:{s.haproxy.frontend_port}"
    statuses: dict[int, int] = {}
    start = int(time.time() * 1000)
    with httpx.Client(base_url=url, timeout=10.0) as http:
        def one(i: int) -> int:
            try:
                return http.get(f"/demo/{marker}/{i}").status_code
            except httpx.HTTPError:
                return 0

        with ThreadPoolExecutor(concurrency) as pool:
            for code in pool.map(one, range(requests)):
                statuses[code] = statuses.get(code, 0) + 1
    return Burst(marker, requests, statuses, start, int(time.time() * 1000))


def watch_access(s: Settings, offsets: dict[int, int], burst: Burst, timeout_s: float = 30.0) -> Hop:
    """Hop 1: HAProxy log line -> ingest -> `fs.access`. Counts this burst's events by marker."""
    t0 = time.monotonic()
    prefix = f"/demo/{burst.marker}/"
    found: dict[str, dict[str, Any]] = {}
    keys: set[str] = set()

    seen = [0]  # records already scanned: `until` is called with the growing list

    def done(records: list[Any]) -> bool:
        for rec in records[seen[0]:]:
            for ev in decode_access_record(rec.value):
                if ev.get("route", "").startswith(prefix):
                    found[ev["id"]] = ev
                    keys.add(rec.key.decode())
        seen[0] = len(records)
        return len(found) >= burst.sent

    records = read_records(s.kafka, s.kafka.topic_access, offsets, done, timeout_s)
    sample = next(iter(found.values()), None)
    return Hop("haproxy log -> ingest -> fs.access", len(found) == burst.sent, time.monotonic() - t0,
               {"events": len(found), "expected": burst.sent, "records": len(records), "keys": sorted(keys),
                "sample": sample})


def watch_features(s: Settings, offsets: dict[int, int], burst: Burst, timeout_s: float = 40.0) -> Hop:
    """Hop 2: Faust windows on `fs.features` covering the burst, per instance, summing to its size."""
    t0 = time.monotonic()
    lo = burst.start_ms - burst.start_ms % (s.streams.window_s * 1000)

    def windows(records: list[Any]) -> list[dict[str, Any]]:
        out = [json.loads(r.value) for r in records]
        return [w for w in out if w["service"] == s.demo.service and w["instance"] != "*"
                and lo <= w["window_start"] <= burst.end_ms]

    def done(records: list[Any]) -> bool:
        return sum(w["requests"] for w in windows(records)) >= burst.sent

    records = read_records(s.kafka, s.kafka.topic_features, offsets, done, timeout_s)
    found = windows(records)
    total = sum(w["requests"] for w in found)
    return Hop("fs.access -> Faust window -> fs.features", total >= burst.sent, time.monotonic() - t0,
               {"windows": found, "requests": total})


def watch_clickhouse(s: Settings, burst: Burst, timeout_s: float = 20.0) -> Hop:
    """Hop 3: the same windows readable in ClickHouse `features` (FINAL)."""
    t0 = time.monotonic()
    lo = burst.start_ms // 1000 - (burst.start_ms // 1000) % s.streams.window_s
    cl = clickhouse_client(s.clickhouse)
    rows: list[tuple[Any, ...]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = cl.execute(
                f"SELECT instance, window_start, requests, latency_p50_ms, latency_p99_ms "
                f"FROM {s.clickhouse.database}.features FINAL "
                "WHERE service = %(svc)s AND instance != '*' AND window_start >= %(lo)s AND window_start <= %(hi)s "
                "ORDER BY window_start, instance",
                {"svc": s.demo.service, "lo": datetime.fromtimestamp(lo, UTC),
                 "hi": datetime.fromtimestamp(burst.end_ms / 1000, UTC)},
            )
            if sum(r[2] for r in rows) >= burst.sent:
                break
            time.sleep(0.3)
    finally:
        cl.disconnect()
    total = sum(r[2] for r in rows)
    return Hop("Faust -> ClickHouse features", total >= burst.sent, time.monotonic() - t0,
               {"rows": [{"instance": r[0], "window_start": r[1].isoformat(), "requests": r[2],
                          "p50_ms": round(r[3], 2), "p99_ms": round(r[4], 2)} for r in rows],
                "requests": total})
