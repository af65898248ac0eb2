"""The record sink against the stack's real Kafka and ClickHouse 18.16: SIGKILLed mid-stream and
restarted, with every event also delivered twice and a bad record among them, it leaves exactly
one row per event under FINAL and the bad record on the dead-letter topic.

Isolated: topics, consumer group and ClickHouse database of its own; the sink runs as a real
`foresight record` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.kafka_admin import ensure_topics, iter_topic
from infra.core.ports import free_port
from infra.core.settings import Settings
from ingest.schemas import AccessEvent, MetricSample, encode_batch

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]


class RecordRun:
    def __init__(self, s: Settings, tmp: Path) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.port = free_port()
        self.kafka = s.kafka.model_copy(update={f"topic_{n}": f"r{self.tag}.{n}"
                                                for n in ("access", "metrics", "dlq", "features", "decisions")})
        self.ch = s.clickhouse.model_copy(update={"database": f"foresight_test_record_{self.tag}"})
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ, FORESIGHT_STATE_DIR=str(self.tmp / "state"),
                   FORESIGHT_CLICKHOUSE__DATABASE=self.ch.database,
                   FORESIGHT_RECORD__GROUP_ID=f"r{self.tag}-record",
                   FORESIGHT_RECORD__METRICS_PORT=str(self.port),
                   FORESIGHT_RECORD__BATCH_MAX_ROWS="400", FORESIGHT_RECORD__FLUSH_S="0.2")
        for n in ("access", "metrics", "dlq", "features", "decisions"):
            env[f"FORESIGHT_KAFKA__TOPIC_{n.upper()}"] = getattr(self.kafka, f"topic_{n}")
        return env

    def start(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"record-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "record"], env=self.env(), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def metric(self, name: str) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return -1.0
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)

    def count(self, sql: str) -> int:
        cl = clickhouse_client(self.ch)
        try:
            return int(cl.execute(sql.format(db=self.ch.database))[0][0])
        finally:
            cl.disconnect()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def run(core_stack: Settings, tmp_path: Path) -> Iterator[RecordRun]:
    r = RecordRun(core_stack, tmp_path)
    ensure_topics(r.kafka)
    migrate(r.ch)
    try:
        yield r
    finally:
        r.stop()
        cl = clickhouse_client(r.ch)
        cl.execute(f"DROP DATABASE IF EXISTS {r.ch.database}")
        cl.disconnect()


def wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def dead_letters(r: RecordRun) -> list[dict[str, object]]:
    return [orjson.loads(v) for v in iter_topic(r.kafka, r.kafka.topic_dlq, 60)]


def test_sigkill_and_redelivery_leave_one_row_per_event(run: RecordRun) -> None:
    producer = KafkaProducer(bootstrap_servers=run.kafka.bootstrap_servers, linger_ms=5)
    n_events, n_samples = 6_000, 300
    events = [AccessEvent(id=f"e{i}", ts=1_764_300_000_000 + i * 7, service="rec", instance=f"i{i % 3}",
                          method="GET", route="/", status=200, latency_ms=1.0, bytes_sent=i, source="test")
              for i in range(n_events)]
    samples = [MetricSample(ts=1_764_300_000_000 + i, service="rec", instance=f"i{i % 3}", name="up", value=1.0,
                            labels={"backend": "rec", "server": f"i{i % 3}"}) for i in range(n_samples)]

    def send_all() -> None:
        for start in range(0, n_events, 100):
            chunk = events[start:start + 100]
            for inst in ("i0", "i1", "i2"):
                mine = [e for e in chunk if e.instance == inst]
                producer.send(run.kafka.topic_access, key=f"rec/{inst}".encode(), value=encode_batch(mine))
        for sample in samples:  # single records, not envelopes
            producer.send(run.kafka.topic_metrics, key=b"rec/i0", value=encode_batch([sample]))
        producer.flush()

    send_all()
    producer.send(run.kafka.topic_access, key=b"rec/i0", value=b'{"id": "broken", "ts": "yesterday"}')
    first = run.start()
    wait_for(lambda: run.count("SELECT count() FROM {db}.access_events") >= n_events // 4, 60, "a first commit")
    first.send_signal(signal.SIGKILL)  # mid-stream: batches written and not committed are delivered again
    first.wait()
    send_all()  # the whole stream delivered twice (a replay or a double ingest)
    producer.close()
    run.start()
    # The restarted sink writes the second copy of every event (and what the first left uncommitted):
    # re-delivered rows reach ClickHouse and collapse there, not in the sink.
    wait_for(lambda: run.metric("foresight_record_rows_written_total") >= n_events + n_samples, 120,
             "the second copy written")
    time.sleep(1.0)  # nothing more arrives: the counts stay exact
    assert run.count("SELECT count() FROM {db}.access_events FINAL") == n_events
    assert run.count("SELECT uniqExact(id) FROM {db}.access_events") == n_events
    assert run.count("SELECT count() FROM {db}.metric_samples FINAL") == n_samples
    assert run.count("SELECT sum(bytes_sent) FROM {db}.access_events FINAL") == sum(range(n_events))
    rejected = [d for d in dead_letters(run) if d["source"] == "record-sink"]
    assert [d["reason"] for d in rejected][:1] == ["bad_access_event"] and "broken" in str(rejected[0]["raw"])
    assert run.metric("foresight_record_ready") == 1.0


def test_nothing_is_committed_while_clickhouse_is_down(run: RecordRun) -> None:
    """ClickHouse unreachable (nothing listens on its port): the batch is retried, no offset is
    committed; once ClickHouse answers, the same batch is written and only then committed."""
    import threading

    from infra.core.settings import RecordSettings, load_settings
    from infra.workers import dead_letter_sender, record_consumer
    from streams.sinks.record import ClickHouseRecordWriter, RecordSink

    s = load_settings().model_copy(update={"kafka": run.kafka, "clickhouse": run.ch,
                                           "record": RecordSettings(group_id=f"r{run.tag}-down", flush_s=0.2)})
    producer = KafkaProducer(bootstrap_servers=run.kafka.bootstrap_servers)
    events = [AccessEvent(id=f"d{i}", ts=1_764_300_000_000 + i, service="down", instance="i0", method="GET",
                          route="/", status=200, latency_ms=1.0, bytes_sent=1, source="test") for i in range(500)]
    producer.send(run.kafka.topic_access, key=b"down/i0", value=encode_batch(events))
    producer.close()

    def committed() -> int:
        probe = KafkaConsumer(bootstrap_servers=run.kafka.bootstrap_servers, group_id=s.record.group_id,
                              enable_auto_commit=False)
        try:
            parts = [TopicPartition(run.kafka.topic_access, p)
                     for p in probe.partitions_for_topic(run.kafka.topic_access) or []]
            return sum(probe.committed(tp) or 0 for tp in parts)
        finally:
            probe.close()

    down = ClickHouseRecordWriter(clickhouse_client(run.ch.model_copy(update={"tcp_port": free_port()})),
                                  run.ch.database)
    consumer = record_consumer(s)
    sink = RecordSink(consumer, down, dead_letter_sender(s), run.kafka.topic_metrics, flush_s=0.2, retry_max_s=0.5)
    stop = threading.Event()
    worker = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    worker.start()
    try:
        wait_for(lambda: (sink.metrics.registry.get_sample_value("foresight_record_write_errors_total",
                                                                 {"target": "clickhouse"}) or 0) >= 3, 60,
                 "failed inserts")
        assert committed() == 0 and run.count("SELECT count() FROM {db}.access_events") == 0
        sink.writer = ClickHouseRecordWriter(clickhouse_client(run.ch), run.ch.database)  # ClickHouse is back
        wait_for(lambda: committed() > 0, 60, "a commit")
        assert run.count("SELECT count() FROM {db}.access_events FINAL") == len(events)
    finally:
        stop.set()
        worker.join(timeout=20)
        consumer.close(autocommit=False)
