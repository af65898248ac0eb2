"""The one place Kafka clients are built (kafka-python's consumer, producer and admin client, aiokafka's
consumer), each from `KafkaSettings`: its bootstrap list and the cluster's SASL/TLS options, so no client
connects to a secured cluster without them (tests/unit/test_kafka_clients.py keeps every other module
from building one itself). And the pipeline's topics: Tansu keeps them in memory, so every `stack up`
may need them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import kafka as kafka_python
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from infra.core.settings import KafkaSettings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer


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


def iter_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 120.0, client_id: str = "foresight-reader"
               ) -> Iterator[bytes]:
    """Every record value of `topic`, each partition from its start to its end, outside any group.

    The end is where a poll comes back empty once past the listed end offsets: Tansu lists the last
    batch's base offset as the end, so stopping there would miss the rest of that batch.
    """
    consumer = kafka_consumer(kafka, enable_auto_commit=False, client_id=client_id,
                              max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not parts:
            raise ValueError(f"topic {topic} does not exist on {kafka.bootstrap_servers}")
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s:.0f} s")
            polled = consumer.poll(timeout_ms=1000)
            if not polled and all(consumer.position(tp) >= ends[tp] for tp in parts):
                return
            for records in polled.values():
                for r in records:
                    yield r.value
    finally:
        consumer.close()
