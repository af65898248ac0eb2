"""The one place Kafka clients are built (kafka-python's consumer, producer and admin client, aiokafka's
consumer), each from `KafkaSettings`: its bootstrap list and the cluster's SASL/TLS options, so no client
connects to a secured cluster without them (tests/unit/test_kafka_clients.py keeps every other module
from building one itself). And the pipeline's topics: Tansu keeps them in memory, so every `stack up`
may need them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import kafka as kafka_python
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import Cancelled, TopicAlreadyExistsError

from infra.core.settings import KafkaSettings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer


class _CancelledByClose(logging.Filter):
    """kafka-python 3.0 logs ERROR "Metadata refresh: failed Cancelled" whenever a client closes while its
    metadata refresh is in flight: the close cancelled the request, nothing failed. A short-lived reader (the
    stream worker's changelog tail reader, on every rebalance) closes that way each time, and the ERROR would
    send an operator looking for a fault. Every other metadata failure still logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Metadata refresh: failed %s" and isinstance(record.args, tuple)
                    and len(record.args) == 1 and isinstance(record.args[0], Cancelled))


logging.getLogger("kafka.cluster").addFilter(_CancelledByClose())


def client_config(kafka: KafkaSettings, **options: Any) -> dict[str, Any]:
    """Keyword arguments of a kafka-python client: the bootstrap list, `options`, then the cluster's SASL
    and TLS options (last, so no caller drops them)."""
    return {"bootstrap_servers": kafka.bootstrap_servers.split(","), **options, **kafka.kafka_python_options()}


# The module's attributes, looked up at each call: a test may replace them.
def kafka_consumer(kafka: KafkaSettings, *topics: str, **options: Any) -> KafkaConsumer:
    return kafka_python.KafkaConsumer(*topics, **client_config(kafka, **options))


def kafka_producer(kafka: KafkaSettings, **options: Any) -> KafkaProducer:
    return kafka_python.KafkaProducer(**client_config(kafka, **options))


def kafka_admin_client(kafka: KafkaSettings, **options: Any) -> KafkaAdminClient:
    return kafka_python.KafkaAdminClient(**client_config(kafka, **options))


def aiokafka_consumer(kafka: KafkaSettings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """aiokafka's consumer (its TLS is an SSLContext, not files); call it inside the loop that uses it."""
    import aiokafka

    return aiokafka.AIOKafkaConsumer(*topics, bootstrap_servers=kafka.bootstrap_servers.split(","),
                                     **options, **kafka.aiokafka_options())


def ensure_topics(kafka: KafkaSettings, extra: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create the missing topics (the pipeline's, and `extra`: name -> topic configs, e.g. a stream
    worker's changelogs); returns the names created."""
    admin = kafka_admin_client(kafka, client_id="foresight-admin")
    try:
        wanted: dict[str, dict[str, str]] = {t: {} for t in kafka.topics}
        wanted |= {t: dict(c) for t, c in (extra or {}).items()}
        present = set(admin.list_topics())
        missing = [t for t in wanted if t not in present]
        if missing:
            # Another process may win the race; the topic is there either way.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, kafka.partitions, 1, topic_configs=wanted[t]) for t in missing])
        return missing
    finally:
        admin.close()


def _reader(kafka: KafkaSettings, client_id: str) -> KafkaConsumer:
    """A consumer outside any group, for reading partitions to their end."""
    return kafka_consumer(kafka, enable_auto_commit=False, client_id=client_id,
                          max_partition_fetch_bytes=8 * 1024 * 1024)


def _to_the_end(consumer: KafkaConsumer, parts: list[TopicPartition], timeout_s: float, poll_ms: int,
                what: str) -> Iterator[tuple[TopicPartition, Any]]:
    """The assigned partitions' records from where the consumer stands to the end, as (partition, record).

    The end is where a poll comes back empty once past the listed end offsets: Tansu lists a partition's
    end as its last record batch's base offset + 1, so stopping there would miss the rest of that batch.
    """
    ends = consumer.end_offsets(parts)
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {what} to the end in {timeout_s:.0f} s")
        polled = consumer.poll(timeout_ms=poll_ms)
        if not polled and all(consumer.position(tp) >= ends[tp] for tp in parts):
            return
        for tp, records in polled.items():
            for r in records:
                yield tp, r


def read_last_batches(kafka: KafkaSettings, partitions: list[tuple[str, int]], timeout_s: float = 10.0,
                      client_id: str = "foresight-tail-reader") -> dict[tuple[str, int], list[Any]]:
    """Each partition's records from its listed end offset minus one to its real end: the whole last
    record batch, which Tansu lists as ending after its first record (`_to_the_end`). A reader that
    stopped at the listed end (Faust's changelog recovery does) misses the rest of it."""
    out: dict[tuple[str, int], list[Any]] = {p: [] for p in partitions}
    if not partitions:
        return out
    consumer = _reader(kafka, client_id)
    try:
        parts = [TopicPartition(topic, p) for topic, p in partitions]
        consumer.assign(parts)
        for tp, end in consumer.end_offsets(parts).items():
            consumer.seek(tp, max(0, end - 1))
        for tp, record in _to_the_end(consumer, parts, timeout_s, 200, f"the last batches of {len(parts)} partitions"):
            out[(tp.topic, tp.partition)].append(record)
        return out
    finally:
        consumer.close()


def iter_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 120.0, client_id: str = "foresight-reader"
               ) -> Iterator[bytes]:
    """Every record value of `topic`, each partition from its start to its end, outside any group."""
    consumer = _reader(kafka, client_id)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not parts:
            raise ValueError(f"topic {topic} does not exist on {kafka.bootstrap_servers}")
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        for _, record in _to_the_end(consumer, parts, timeout_s, 1000, topic):
            yield record.value
    finally:
        consumer.close()
