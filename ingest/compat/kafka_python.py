"""kafka-python's private producer internals: the one place that touches them.

`KafkaSink` must make a producer fail what it still holds *without* sending it (so that spooled
records cannot reach Kafka behind their replay). `KafkaProducer.close` first flushes, and raises
when that cannot finish; only its sender thread's `force_close` does this.
"""

from __future__ import annotations

from typing import Any

from infra.core.internals import require

LIBRARY = "kafka-python"


def abort(producer: Any) -> None:
    """Make `producer` fail every record it still holds instead of sending it. Does not block."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()


def check() -> None:
    """The installed kafka-python still gives a producer a `_sender` thread with `force_close()`."""
    from kafka import KafkaProducer

    # api_version given: no broker is asked for anything, the producer only starts its thread.
    producer = KafkaProducer(bootstrap_servers=["127.0.0.1:1"], api_version=(2, 5, 0))
    try:
        sender = getattr(producer, "_sender", None)
        require(LIBRARY, sender is not None, "KafkaProducer has no `_sender`", __name__)
        require(LIBRARY, callable(getattr(sender, "force_close", None)),
                "the producer's `_sender` has no `force_close()`", __name__)
        abort(producer)
    finally:
        producer.close(timeout=0)
