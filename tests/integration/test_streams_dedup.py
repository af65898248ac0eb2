"""Ingest delivers at least once; the real worker still counts every event exactly once.

The NASA sample ingested twice, a spool replay overlapping what was already delivered (the real
ingest spool and `KafkaSink`), and a worker SIGKILLed while copies stream in: every window in
ClickHouse equals the offline reference (`streams.reference`, which counts an id once), and every
copy the worker saw was either dropped as a duplicate or, its window already closed, counted late:
none was counted. Plus the cap on instances per service: past it, events go to the dead-letter
topic with their reason, none is lost silently.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from infra.benches.streams import IsolatedPipeline, replicated_trace, sample_events, worker_command
from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.ports import free_port
from infra.core.settings import Settings
from infra.core.spool import Spool
from ingest.schemas import AccessEvent, encode_batch
from ingest.sinks.kafka import KafkaSink
from streams.reference import SERVICE_WIDE, WindowRow, compare_windows, reference_windows
from streams.windows import SKETCH_RELATIVE_ACCURACY
from tests.integration.test_streams_recovery import (
    Run,
    Traffic,
    assert_windows_match,
    core,  # noqa: F401  (the fixture: the stack's Kafka and ClickHouse, the only parts used here)
    metric,
    ready,
    wait_for,
)

pytestmark = pytest.mark.timeout(420)
DUPLICATES = "foresight_stream_duplicates_total"


@pytest.fixture(scope="module")
def kc(core: Settings) -> Settings:  # noqa: F811  (`core` is the fixture imported above)
    """Settings of the stack's Kafka and ClickHouse."""
    return core


def with_idle_close(stack: Settings, idle_close_s: float) -> Settings:
    """The stack's settings with windows closed by wall clock only after `idle_close_s` of quiet: a
    1995 log would otherwise close every window one second after its first part arrived."""
    return stack.model_copy(update={"streams": stack.streams.model_copy(update={"idle_close_s": idle_close_s})})


def collect(p: IsolatedPipeline, distinct: int, timeout_s: float) -> list[WindowRow]:
    """The rows (FINAL) once instance and service windows hold `distinct` requests, or at the timeout."""
    deadline = time.monotonic() + timeout_s
    rows = p.feature_rows()
    while time.monotonic() < deadline:
        if all(sum(r.requests for r in rows if (r.instance == SERVICE_WIDE) == svc) >= distinct for svc in (0, 1)):
            break
        time.sleep(0.5)
        rows = p.feature_rows()
    time.sleep(1.0)  # anything written twice would show now
    return p.feature_rows()


def check_exact(stack: Settings, p: IsolatedPipeline, sent: Sequence[AccessEvent], timeout_s: float) -> tuple[int, int]:
    """Windows equal the reference of the distinct events; (duplicates dropped, late) by the worker,
    which together are every copy: a copy is never counted."""
    distinct = {e.id: e for e in sent}
    rows = collect(p, len(distinct), timeout_s)
    window_s = stack.streams.window_s
    reference = reference_windows((e.__dict__ for e in sent), window_s)
    problems = compare_windows(reference, rows, window_s, SKETCH_RELATIVE_ACCURACY)
    assert not problems, "\n".join(problems[:25]) + f"\n--- worker log ---\n{p.worker_log()}"
    dups, late = int(p.metric(DUPLICATES) or 0), p.late_access_events()
    assert dups + late == len(sent) - len(distinct), (dups, late, len(sent) - len(distinct))
    return dups, late


def test_nasa_sample_ingested_twice_equals_the_reference(kc: Settings) -> None:
    """Each part of the log sent twice in a row, as two shippers of the same file would."""
    events = sample_events(dataset_path(NASA_SAMPLE))
    parts = [events[i:i + 100] for i in range(0, len(events), 100)]
    with IsolatedPipeline(with_idle_close(kc, 5.0), worker_command()) as p:
        p.start_worker()
        for part in parts:
            p.sink.send_events(part)
            p.sink.send_events(part)
        p.sink.flush(timeout=60)
        dups, _ = check_exact(kc, p, [e for part in parts for e in (*part, *part)], timeout_s=120)
    assert dups >= len(parts)  # at least the last event of each part was still in an open window


def test_spool_replay_overlapping_delivered_events_equals_the_reference(kc: Settings, tmp_path: Path) -> None:
    """Ingest delivered the first 12 seconds of log; its spool still held the last 12 of 20 (a crash
    after Kafka acknowledged, before the spool moved on) and replays them: 4 seconds go twice."""
    chunks = list(replicated_trace(dataset_path(NASA_SAMPLE), 20_000, instances=4))  # a second of log each
    assert len(chunks) == 20
    delivered, spooled = [e for c in chunks[:12] for e in c], [e for c in chunks[8:] for e in c]
    overlap = len(delivered) + len(spooled) - sum(map(len, chunks))
    assert overlap >= 3_900
    with IsolatedPipeline(with_idle_close(kc, 8.0), worker_command()) as p:
        kafka = p.settings.kafka
        with Spool(tmp_path / "spool", 64 * 1024 * 1024) as spool:
            for start in range(0, len(spooled), 200):
                part = spooled[start:start + 200]
                by_key: dict[str, list[AccessEvent]] = {}
                for e in part:
                    by_key.setdefault(e.key, []).append(e)
                spool.append([(kafka.topic_access, key.encode(), encode_batch(evs)) for key, evs in by_key.items()])
        p.start_worker()
        for chunk in chunks[:12]:  # in time order, as the log was written
            p.sink.send_events(chunk)
        p.sink.flush(timeout=60)
        replayer = KafkaSink(kafka, spool=Spool(tmp_path / "spool", 64 * 1024 * 1024), client_id="test-replay")
        try:
            assert replayer.wait_replayed(60.0), "the spool was not replayed"
        finally:
            replayer.close(timeout=10)
        dups, _ = check_exact(kc, p, delivered + spooled, timeout_s=180)
    assert dups > 0  # dense copies: the overlap reaches into windows still open


class CopyingTraffic(Traffic):
    """Traffic whose every access record is sent again one tick later, to the same partition: the reference
    counts it once."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.previous: list[tuple[bytes, bytes, int | None]] = []
        self.current: list[tuple[bytes, bytes, int | None]] = []
        self.send_once = self.producer.send
        self.producer.send = self._send_noting

    def _send_noting(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> object:
        if topic == self.run.topic("access"):
            self.current.append((key, value, partition))
        return self.send_once(topic, key=key, value=value, partition=partition)

    def tick(self, per_key: int) -> None:
        self.current = []
        super().tick(per_key)
        for key, value, partition in self.previous:
            self.send_once(self.run.topic("access"), key=key, value=value, partition=partition)
        self.previous = self.current


@pytest.mark.timeout(300)
def test_sigkill_during_a_duplicate_stream_still_exact(kc: Settings) -> None:
    run = Run(kc)
    run.create_topics()
    traffic = CopyingTraffic(run)
    port = free_port()
    try:
        first = run.start_worker(port)
        wait_for(lambda: ready(port), 60, "the first worker")
        traffic.stream(5)
        wait_for(lambda: metric(port, DUPLICATES) > 0, 30, "duplicates dropped")
        first.send_signal(signal.SIGKILL)  # mid-stream: open windows with their ids, uncommitted offsets
        first.wait(timeout=10)
        traffic.stream(1)
        run.start_worker(port)
        traffic.stream(6)
        traffic.close()
        assert_windows_match(run)  # counts exact, each window once, nothing late
        assert metric(port, DUPLICATES) > 0  # the restarted worker dropped copies too
    finally:
        run.stop_workers()


@pytest.mark.timeout(300)
def test_instances_past_the_cap_are_dead_lettered_and_counted(kc: Settings, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("FORESIGHT_STREAMS__MAX_INSTANCES_PER_SERVICE", "3")
    run = Run(kc)
    run.create_topics()
    service = run.service("cap")
    producer = Traffic(run).producer
    sent: Counter[str] = Counter()
    now = int(time.time() * 1000)
    port = free_port()
    try:
        run.start_worker(port)
        wait_for(lambda: ready(port), 60, "the worker")
        for n in range(5):
            for r in range(3):
                events = [AccessEvent(id=f"c{n}-{r}-{k}", ts=now + k, service=service, instance=f"i{n}", method="GET",
                                      route="/", status=200, latency_ms=1.0, bytes_sent=1, source="test")
                          for k in range(5)]
                producer.send(run.topic("access"), key=f"{service}/i{n}".encode(), value=encode_batch(events))
                sent[f"i{n}"] += len(events)
        producer.flush()
        wait_for(lambda: metric(port, "foresight_stream_over_cap_events_total") >= 30, 60, "events set aside")
        wait_for(lambda: metric(port, "foresight_stream_events_total") >= 45, 60, "events counted")
        assert metric(port, "foresight_stream_over_cap_events_total") == 30  # 2 instances x 15 events
        assert metric(port, "foresight_stream_events_total") == 45
        assert metric(port, "foresight_stream_tracked_instances") == 3
        consumer = KafkaConsumer(run.topic("dlq"), bootstrap_servers=kc.kafka.bootstrap_servers,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5_000)
        try:
            dead = [orjson.loads(m.value) for m in consumer]
        finally:
            consumer.close()
        assert [d["reason"] for d in dead] == ["too_many_instances"] * 6  # one per refused record
        refused = {orjson.loads(d["raw"])["events"][0]["instance"] for d in dead}
        assert len(refused) == 2 and all(sent[i] == 15 for i in refused)
        assert all(service in d["detail"] and "max_instances_per_service" in d["detail"] for d in dead)
    finally:
        producer.close()
        run.stop_workers()
