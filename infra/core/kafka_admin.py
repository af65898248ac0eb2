"""Create the pipeline's topics; Tansu keeps topics in memory, so every `stack up` may need them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from infra.core.settings import KafkaSettings


def ensure_topics(kafka: KafkaSettings, extra: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create the missing topics (the pipeline's, and `extra`: name -> topic configs, e.g. a stream
    worker's changelogs); returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="foresight-admin",
                             **kafka.kafka_python_options())
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


def iter_topic(bootstrap_servers: str, topic: str, timeout_s: float = 120.0, client_id: str = "foresight-reader"
               ) -> Iterator[bytes]:
    """Every record value of `topic`, each partition from its start to its end, outside any group.

    The end is where a poll comes back empty once past the listed end offsets: Tansu lists the last
    batch's base offset as the end, so stopping there would miss the rest of that batch.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers.split(","), enable_auto_commit=False,
                             client_id=client_id, max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not parts:
            raise ValueError(f"topic {topic} does not exist on {bootstrap_servers}")
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
