"""Create the pipeline's topics; Tansu keeps topics in memory, so every `stack up` may need them."""

from __future__ import annotations

import contextlib

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from infra.core.settings import KafkaSettings


def ensure_topics(kafka: KafkaSettings) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="foresight-admin",
                             **kafka.kafka_python_options())
    try:
        missing = [t for t in kafka.topics if t not in set(admin.list_topics())]
        if missing:
            # Another process may win the race; the topic is there either way.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, kafka.partitions, 1) for t in missing])
        return missing
    finally:
        admin.close()
