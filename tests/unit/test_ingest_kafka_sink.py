"""KafkaSink against a recording producer: keys, batch envelopes, DLQ records, counters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future
from prometheus_client import REGISTRY

from infra.settings import KafkaSettings
from ingest.schemas import AccessEvent, Rejection, decode_access_record
from ingest.sinks.kafka import KafkaSink


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    future: Future


@dataclass
class RecordingProducer:
    sent: list[Sent] = field(default_factory=list)
    fail_send: BaseException | None = None
    flushed: int = 0
    closed: bool = False

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        if self.fail_send is not None:
            raise self.fail_send
        f = Future()
        self.sent.append(Sent(topic, key, value, f))
        return f

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def ack_all(self) -> None:
        for s in self.sent:
            s.future.success(None)


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
    sink.close()
    assert (producer.flushed, producer.closed) == (1, True)
    with pytest.raises(ValueError):
        KafkaSink(KafkaSettings(), 0, producer=RecordingProducer())


def test_too_large_single_event_is_an_error_not_a_crash() -> None:
    sink, producer = make()
    producer.fail_send = MessageSizeTooLargeError("big")
    errors0 = sample("foresight_ingest_send_errors_total", topic="fs.access")
    sink.send_events([ev(1)])
    assert sample("foresight_ingest_send_errors_total", topic="fs.access") == errors0 + 1
