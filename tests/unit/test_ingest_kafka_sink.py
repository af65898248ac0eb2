"""KafkaSink against a recording producer: keys, batch envelopes, DLQ records, counters; the disk
spool when Kafka is unreachable (order, replay, back-pressure, duplicates, restart)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future
from prometheus_client import REGISTRY

from infra.core.settings import KafkaSettings
from infra.core.spool import Spool
from ingest.schemas import AccessEvent, Rejection, decode_access_record, encode_batch
from ingest.sinks.kafka import BackPressure, KafkaSink


class FakeFuture(Future):
    """A kafka-python future that can also be waited on, as the replayer does with the real ones."""

    def __init__(self) -> None:
        super().__init__()
        self.resolved = threading.Event()

    def success(self, value: Any) -> FakeFuture:
        super().success(value)
        self.resolved.set()
        return self

    def failure(self, e: Any) -> FakeFuture:
        super().failure(e)
        self.resolved.set()
        return self

    def get(self, timeout: float | None = None) -> Any:
        if not self.resolved.wait(timeout):
            raise KafkaTimeoutError("no answer")
        if self.exception is not None:
            raise self.exception
        return self.value


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    future: FakeFuture


@dataclass
class RecordingProducer:
    """`outcome(sent)` decides each send's fate when it is made: None pending, True acked, an error failed."""

    sent: list[Sent] = field(default_factory=list)
    fail_send: BaseException | None = None
    fail_flush: BaseException | None = None
    outcome: Callable[[Sent], object] = lambda _s: None
    flushed: int = 0
    closed: bool = False

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        if self.fail_send is not None:
            raise self.fail_send
        s = Sent(topic, key, value, FakeFuture())
        self.sent.append(s)
        result = self.outcome(s)
        if result is True:
            s.future.success(None)
        elif isinstance(result, BaseException):
            s.future.failure(result)
        return s.future

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1
        if self.fail_flush is not None:
            raise self.fail_flush

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    @property
    def _sender(self) -> RecordingProducer:
        return self  # kafka-python's force-close hook, as `_abort` reaches it

    def force_close(self) -> None:
        """As kafka-python's sender: what is still held fails, nothing more is sent."""
        self.aborted = True
        for s in self.sent:
            if not s.future.is_done:
                s.future.failure(KafkaError("producer closed forcefully"))

    aborted: bool = False

    def ack_all(self) -> None:
        for s in self.sent:
            if not s.future.is_done:
                s.future.success(None)

    def ids(self, start: int = 0) -> list[str]:
        """Event ids (or `dlq:<source>`) of the sends from index `start` on, in send order."""
        out: list[str] = []
        for s in self.sent[start:]:
            if s.topic == "fs.dlq":
                out.append(f"dlq:{json.loads(s.value)['source']}")
            else:
                out += [e["id"] for e in decode_access_record(s.value)]
        return out


def ev(i: int, service: str = "demo", instance: str = "s1") -> AccessEvent:
    return AccessEvent(id=f"id{i}", ts=1000 + i, service=service, instance=instance, method="GET",
                       route="/", status=200, latency_ms=1.5, bytes_sent=10, source="haproxy")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make(batch_max: int = 500, max_record_bytes: int = 900_000) -> tuple[KafkaSink, RecordingProducer]:
    producer = RecordingProducer()
    return KafkaSink(KafkaSettings(), batch_max, producer=producer, max_record_bytes=max_record_bytes), producer


def test_events_grouped_by_key_into_batches_of_at_most_batch_max() -> None:
    sink, producer = make(batch_max=3)
    events = [ev(i, instance="s1") for i in range(7)] + [ev(100, instance="s2")]
    events.insert(2, ev(50, service="other", instance="s1"))
    sink.send_events(events)

    assert {s.topic for s in producer.sent} == {"fs.access"}
    by_key: dict[bytes, list[list[dict[str, object]]]] = {}
    for s in producer.sent:
        by_key.setdefault(s.key, []).append(decode_access_record(s.value))
    assert [len(r) for r in by_key[b"demo/s1"]] == [3, 3, 1]
    assert [e["id"] for r in by_key[b"demo/s1"] for e in r] == [f"id{i}" for i in range(7)]  # order kept
    assert by_key[b"demo/s2"] == [[ev(100, instance="s2").model_dump()]]
    assert by_key[b"other/s1"] == [[ev(50, service="other", instance="s1").model_dump()]]
    envelope = json.loads(producer.sent[0].value)
    assert (envelope["v"], envelope["count"]) == (1, 3)
    # A single event is sent bare, not wrapped.
    assert "events" not in json.loads(next(s.value for s in producer.sent if s.key == b"demo/s2"))


def test_counters_move_on_acknowledgement_not_on_send() -> None:
    sink, producer = make(batch_max=2)
    events0 = sample("foresight_ingest_events_sent_total")
    records0 = sample("foresight_ingest_records_sent_total", topic="fs.access")
    sink.send_events([ev(i) for i in range(5)])
    assert sample("foresight_ingest_events_sent_total") == events0
    producer.ack_all()
    assert sample("foresight_ingest_events_sent_total") == events0 + 5
    assert sample("foresight_ingest_records_sent_total", topic="fs.access") == records0 + 3


def test_failures_are_counted_not_raised() -> None:
    sink, producer = make()
    errors0 = sample("foresight_ingest_send_errors_total", topic="fs.access")
    sink.send_events([ev(1)])
    producer.sent[0].future.failure(KafkaTimeoutError("gone"))
    producer.fail_send = KafkaTimeoutError("no metadata")
    sink.send_events([ev(2)])
    assert sample("foresight_ingest_send_errors_total", topic="fs.access") == errors0 + 2


def test_rejection_goes_to_dlq_keyed_by_source_and_is_counted() -> None:
    sink, producer = make()
    before = sample("foresight_ingest_rejections_total", source="haproxy", reason="bad_status")
    rej = Rejection(source="haproxy", reason="bad_status", detail="status 'x'", raw="line", ts_received=5)
    sink.send_rejection(rej)
    (sent,) = producer.sent
    assert (sent.topic, sent.key) == ("fs.dlq", b"haproxy")
    assert Rejection.model_validate_json(sent.value) == rej
    assert sample("foresight_ingest_rejections_total", source="haproxy", reason="bad_status") == before + 1


def test_topics_come_from_settings() -> None:
    producer = RecordingProducer()
    sink = KafkaSink(KafkaSettings(topic_access="a.x", topic_dlq="d.x"), producer=producer)
    sink.send_events([ev(1)])
    sink.send_rejection(Rejection(source="haproxy", reason="r", raw="", ts_received=0))
    assert [s.topic for s in producer.sent] == ["a.x", "d.x"]


def test_oversized_batches_are_split_to_fit() -> None:
    one = len(ev(1).model_dump_json())
    sink, producer = make(batch_max=100, max_record_bytes=one * 3 + 60)
    sink.send_events([ev(i) for i in range(10)])
    sizes = [len(decode_access_record(s.value)) for s in producer.sent]
    assert sum(sizes) == 10 and max(sizes) <= 3
    assert all(len(s.value) <= one * 3 + 60 for s in producer.sent)
    ids = [e["id"] for s in producer.sent for e in decode_access_record(s.value)]
    assert ids == [f"id{i}" for i in range(10)]


def test_flush_close_and_bad_batch_max() -> None:
    sink, producer = make()
    sink.flush()
    assert (producer.flushed, producer.closed) == (1, False)
    sink.close()
    assert producer.closed
    with pytest.raises(ValueError):
        KafkaSink(KafkaSettings(), 0, producer=RecordingProducer())


def test_too_large_single_event_is_an_error_not_a_crash() -> None:
    sink, producer = make()
    producer.fail_send = MessageSizeTooLargeError("big")
    errors0 = sample("foresight_ingest_send_errors_total", topic="fs.access")
    sink.send_events([ev(1)])
    assert sample("foresight_ingest_send_errors_total", topic="fs.access") == errors0 + 1


# -- with a disk spool ------------------------------------------------------------------------


class Switch:
    """The broker probe, flipped by the test."""

    def __init__(self) -> None:
        self.up = False

    def __call__(self) -> bool:
        return self.up


@pytest.fixture
def spooled(tmp_path: Path) -> Iterator[tuple[KafkaSink, RecordingProducer, Switch]]:
    producer, probe = RecordingProducer(), Switch()
    sink = KafkaSink(KafkaSettings(), 500, spool=Spool(tmp_path / "spool", 1 << 20), producer=producer, probe=probe,
                     max_record_bytes=50_000, backpressure_wait_s=0.05, retry_backoff_s=(0.01, 0.05))
    yield sink, producer, probe
    probe.up = True
    producer.outcome = lambda _s: True
    sink.close(timeout=5)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def bring_back(sink: KafkaSink, producer: RecordingProducer, probe: Switch) -> None:
    producer.outcome = lambda _s: True
    probe.up = True
    assert sink.wait_replayed(5.0)


def test_outage_spools_every_unacknowledged_record_and_replays_them_in_order(
        spooled: tuple[KafkaSink, RecordingProducer, Switch]) -> None:
    sink, producer, probe = spooled
    spooled0 = sample("foresight_ingest_records_spooled_total", topic="fs.access")
    replayed0 = sample("foresight_ingest_records_replayed_total", topic="fs.access")
    acked0 = sample("foresight_ingest_events_sent_total")
    for i in range(3):
        sink.send_events([ev(i)])
    producer.sent[1].future.failure(KafkaTimeoutError("expired"))  # the broker is gone; 0 and 2 still pending
    sink.send_events([ev(3), ev(4)])  # after a failure: behind the spooled ones, not to the producer
    sink.send_rejection(Rejection(source="haproxy", reason="r", raw="x", ts_received=1))
    assert sink.spooling and len(producer.sent) == 3
    assert sample("foresight_ingest_records_spooled_total", topic="fs.access") == spooled0 + 4
    assert sample("foresight_ingest_spool_records") == 5 and sample("foresight_ingest_spooling") == 1

    time.sleep(0.1)  # the replayer polls, but the probe says the broker is still down
    assert len(producer.sent) == 3
    bring_back(sink, producer, probe)
    assert producer.ids(3) == ["id0", "id1", "id2", "id3", "id4", "dlq:haproxy"]
    assert sample("foresight_ingest_records_replayed_total", topic="fs.access") == replayed0 + 4
    assert sample("foresight_ingest_events_sent_total") == acked0 + 5
    assert sample("foresight_ingest_spool_records") == 0 and sample("foresight_ingest_spooling") == 0

    sink.send_events([ev(5)])  # direct again
    assert producer.ids(8) == ["id5"]  # 3 direct + 5 replayed records before it


def test_a_late_ack_of_a_spooled_record_is_counted_as_a_duplicate(
        spooled: tuple[KafkaSink, RecordingProducer, Switch]) -> None:
    sink, producer, _probe = spooled
    dups0 = sample("foresight_ingest_records_duplicated_total", reason="acked_after_spooling")
    sink.send_events([ev(0)])
    sink.send_events([ev(1)])
    producer.sent[1].future.failure(KafkaTimeoutError("expired"))
    wait_for(lambda: sink.spooling)  # the replayer notices the failure on its own
    producer.sent[0].future.success(None)  # the producer's own retry got through after all
    assert sample("foresight_ingest_records_duplicated_total", reason="acked_after_spooling") == dups0 + 1


def test_a_replay_failing_part_way_keeps_the_rest_and_counts_what_may_repeat(
        spooled: tuple[KafkaSink, RecordingProducer, Switch]) -> None:
    sink, producer, probe = spooled
    dups0 = sample("foresight_ingest_records_duplicated_total", reason="replay_partial")
    producer.fail_send = KafkaTimeoutError("no metadata")
    sink.send_events([ev(i, instance=f"s{i}") for i in range(3)])  # three keys, three records
    producer.fail_send = None
    assert sink.spooling and producer.sent == []
    calls = iter([True, KafkaTimeoutError("gone again"), True])
    producer.outcome = lambda _s: next(calls, True)
    probe.up = True
    assert sink.wait_replayed(5.0)
    # id1 failed: id0 is committed; id2 was acknowledged but stays behind id1, so it goes twice.
    assert producer.ids() == ["id0", "id1", "id2", "id1", "id2"]
    assert sample("foresight_ingest_records_duplicated_total", reason="replay_partial") == dups0 + 1


def test_a_refused_send_spools_it_and_the_rest_of_the_call_in_order(
        spooled: tuple[KafkaSink, RecordingProducer, Switch]) -> None:
    sink, producer, probe = spooled
    sink.send_events([ev(0, instance="a")])
    producer.fail_send = KafkaTimeoutError("buffer full")
    sink.send_events([ev(1, instance="b"), ev(2, instance="c")])
    producer.fail_send = None
    assert sink.spooling
    bring_back(sink, producer, probe)
    assert producer.ids() == ["id0", "id0", "id1", "id2"]  # id0 was unacknowledged, so it went to the spool too


def test_record_errors_are_dropped_and_counted_not_spooled(
        spooled: tuple[KafkaSink, RecordingProducer, Switch]) -> None:
    sink, producer, _probe = spooled
    errors0 = sample("foresight_ingest_send_errors_total", topic="fs.access")
    sink.send_events([ev(0)])
    producer.sent[0].future.failure(MessageSizeTooLargeError("big"))
    producer.fail_send = MessageSizeTooLargeError("big")
    sink.send_events([ev(1)])
    producer.fail_send = None
    sink.send_events([ev(2)])
    assert not sink.spooling and producer.ids() == ["id0", "id2"]
    assert sample("foresight_ingest_send_errors_total", topic="fs.access") == errors0 + 2


def test_full_spool_refuses_the_call_with_back_pressure_and_takes_none_of_it(tmp_path: Path) -> None:
    producer, probe = RecordingProducer(fail_send=KafkaTimeoutError("down")), Switch()
    record = len(encode_batch([ev(0)]))
    spool = Spool(tmp_path, 4 * record + 200)
    sink = KafkaSink(KafkaSettings(), 500, spool=spool, producer=producer, probe=probe, max_record_bytes=2 * record,
                     backpressure_wait_s=0.2, retry_backoff_s=(0.01, 0.05))
    raised0 = sample("foresight_ingest_backpressure_raised_total")
    seconds0 = sample("foresight_ingest_backpressure_seconds_total")
    accepted = 0
    with pytest.raises(BackPressure) as e:
        for i in range(10):
            sink.send_events([ev(i)])
            accepted += 1
    assert accepted == 4 and e.value.spool_max_bytes == spool.max_bytes
    assert e.value.waited_s >= 0.2 and len(spool) == 4
    assert sample("foresight_ingest_backpressure_raised_total") == raised0 + 1
    assert sample("foresight_ingest_backpressure_seconds_total") >= seconds0 + 0.2

    producer.fail_send = None
    bring_back(sink, producer, probe)
    assert producer.ids() == ["id0", "id1", "id2", "id3"]  # the refused id4 is the caller's to retry
    sink.close(timeout=5)


def test_back_pressure_waits_for_replay_to_make_room(tmp_path: Path) -> None:
    producer, probe = RecordingProducer(fail_send=KafkaTimeoutError("down")), Switch()
    record = len(encode_batch([ev(0)]))
    sink = KafkaSink(KafkaSettings(), 500, spool=Spool(tmp_path, 2 * record + 100), producer=producer, probe=probe,
                     max_record_bytes=record, backpressure_wait_s=5.0, retry_backoff_s=(0.01, 0.05))
    sink.send_events([ev(0)])
    sink.send_events([ev(1)])
    producer.fail_send = None
    producer.outcome = lambda _s: True
    threading.Timer(0.2, lambda: setattr(probe, "up", True)).start()
    start = time.monotonic()
    sink.send_events([ev(2)])  # waits until the replayer has made room, then is taken
    assert 0.15 < time.monotonic() - start < 5.0
    assert sink.wait_replayed(5.0)
    assert producer.ids() == ["id0", "id1", "id2"]
    sink.close(timeout=5)


def test_a_spool_left_by_a_previous_process_goes_first(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as old:
        old.append([("fs.access", b"demo/s1", encode_batch([ev(0), ev(1)]))])
    producer, probe = RecordingProducer(), Switch()
    sink = KafkaSink(KafkaSettings(), 500, spool=Spool(tmp_path, 1 << 20), producer=producer, probe=probe,
                     max_record_bytes=10_000, retry_backoff_s=(0.01, 0.05))
    assert sink.spooling
    acked0 = sample("foresight_ingest_events_sent_total")
    sink.send_events([ev(2)])
    assert producer.sent == []
    bring_back(sink, producer, probe)
    assert producer.ids() == ["id0", "id1", "id2"]
    assert sample("foresight_ingest_events_sent_total") == acked0 + 3  # the envelope's count, read on replay
    sink.close(timeout=5)


def test_close_and_flush_leave_every_unanswered_record_on_disk(tmp_path: Path) -> None:
    producer, probe = RecordingProducer(), Switch()
    sink = KafkaSink(KafkaSettings(), 500, spool=Spool(tmp_path, 1 << 20), producer=producer, probe=probe,
                     max_record_bytes=10_000, retry_backoff_s=(0.01, 0.05))
    sink.send_events([ev(0)])
    sink.send_events([ev(1)])
    producer.sent[0].future.success(None)
    producer.fail_flush = KafkaTimeoutError("flush timed out")
    sink.flush(timeout=0.1)  # no exception: id1 is on disk instead
    assert sink.spooling
    sink.send_events([ev(2)])
    sink.close(timeout=1)
    with Spool(tmp_path, 1 << 20) as again:
        assert [decode_access_record(r.value)[0]["id"] for r in again.peek(10)] == ["id1", "id2"]


def test_spool_must_hold_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        KafkaSink(KafkaSettings(), spool=Spool(tmp_path, 1000), producer=RecordingProducer(), max_record_bytes=600)


def test_the_producer_holding_spooled_records_is_discarded_so_they_cannot_arrive_out_of_order(tmp_path: Path) -> None:
    """A record still in the old producer (id0) must not reach Kafka ahead of the replay of id1."""
    made: list[RecordingProducer] = []

    def factory() -> RecordingProducer:
        made.append(RecordingProducer(outcome=(lambda _s: True) if made else (lambda _s: None)))
        return made[-1]

    probe = Switch()
    sink = KafkaSink(KafkaSettings(), 500, spool=Spool(tmp_path, 1 << 20), producer_factory=factory, probe=probe,
                     max_record_bytes=10_000, retry_backoff_s=(0.01, 0.05))
    sink.send_events([ev(0)])
    sink.send_events([ev(1)])
    made[0].sent[1].future.failure(KafkaTimeoutError("expired"))
    sink.send_events([ev(2)])
    assert made[0].aborted and made[0].sent[0].future.failed()  # never delivered by the old one
    probe.up = True
    assert sink.wait_replayed(5.0)
    assert len(made) == 2 and made[1].ids() == ["id0", "id1", "id2"]
    assert made[0].closed
    sink.send_events([ev(3)])
    assert made[1].ids(3) == ["id3"]
    sink.close(timeout=5)


def test_unreachable_at_start_spools_until_a_producer_can_be_made(tmp_path: Path) -> None:
    made: list[RecordingProducer] = []
    probe = Switch()

    def factory() -> RecordingProducer:
        if not probe.up:
            raise KafkaTimeoutError("Unable to bootstrap")
        made.append(RecordingProducer(outcome=lambda _s: True))
        return made[-1]

    sink = KafkaSink(KafkaSettings(), 500, spool=Spool(tmp_path, 1 << 20), producer_factory=factory, probe=probe,
                     max_record_bytes=10_000, retry_backoff_s=(0.01, 0.05))
    assert sink.spooling
    sink.send_events([ev(0)])
    sink.flush()
    probe.up = True
    assert sink.wait_replayed(5.0)
    sink.send_events([ev(1)])
    assert made[0].ids() == ["id0", "id1"]
    sink.close(timeout=5)
    probe.up = False
    with pytest.raises(KafkaTimeoutError):  # without a spool there is nowhere to put events: fail loudly
        KafkaSink(KafkaSettings(), producer_factory=factory)


def test_events_of_one_key_are_sent_in_order_in_chunks() -> None:
    sink, producer = make(batch_max=3)
    sink.send_events([ev(i, instance="s1") for i in range(7)])
    assert [s.key for s in producer.sent] == [b"demo/s1"] * 3
    assert [[e["id"] for e in decode_access_record(s.value)] for s in producer.sent] == [
        ["id0", "id1", "id2"], ["id3", "id4", "id5"], ["id6"]]
    sink.send_events([])
    assert len(producer.sent) == 3
