"""Events to `fs.access` as keyed batch records, rejections to `fs.dlq`.

Keying by `service/instance` keeps one instance's events on one partition, in order, and lets a
record carry a batch envelope of many events (far fewer, larger records than one per request).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from infra.settings import KafkaSettings
from ingest import metrics
from ingest.schemas import AccessEvent, Rejection, encode_access_batch

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 900_000  # under the producer's 1 MiB max_request_size, with room for key and overhead


class KafkaSink:
    """Sends are asynchronous (the producer batches and retries); `flush` waits for acknowledgements."""

    def __init__(
        self,
        kafka: KafkaSettings,
        batch_max: int = 500,
        *,
        producer: Any = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
        client_id: str = "foresight-ingest",
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.topic_access = kafka.topic_access
        self.topic_dlq = kafka.topic_dlq
        self.batch_max = batch_max
        self.max_record_bytes = max_record_bytes
        self._producer = producer if producer is not None else KafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers.split(","),
            client_id=client_id,
            acks="all",
            compression_type=kafka.compression or None,
            linger_ms=kafka.linger_ms,
            retries=10,
            retry_backoff_ms=200,
            delivery_timeout_ms=120_000,
        )

    def send_events(self, events: list[AccessEvent]) -> None:
        """One record per key and chunk of at most `batch_max` events (fewer if it would be too large)."""
        by_key: dict[str, list[AccessEvent]] = {}
        for e in events:
            by_key.setdefault(e.key, []).append(e)
        for key, group in by_key.items():
            key_bytes = key.encode()
            for start in range(0, len(group), self.batch_max):
                for chunk, value in self._records(group[start:start + self.batch_max]):
                    self._send(self.topic_access, key_bytes, value, len(chunk))

    def send_rejection(self, rej: Rejection) -> None:
        metrics.REJECTIONS.labels(source=rej.source, reason=rej.reason).inc()
        self._send(self.topic_dlq, rej.source.encode(), rej.model_dump_json().encode(), 0)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        self._producer.close(timeout=timeout)

    def _records(self, chunk: list[AccessEvent]) -> Iterator[tuple[list[AccessEvent], bytes]]:
        """Halve a chunk until each record fits; a lone oversized event still goes (and fails loudly)."""
        value = encode_access_batch(chunk)
        if len(value) <= self.max_record_bytes or len(chunk) == 1:
            yield chunk, value
            return
        mid = len(chunk) // 2
        yield from self._records(chunk[:mid])
        yield from self._records(chunk[mid:])

    def _send(self, topic: str, key: bytes, value: bytes, n_events: int) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as e:  # metadata or buffer timeout, record too large: the record is lost
            self._failed(topic, n_events, e)
            return
        future.add_callback(self._acked, topic, n_events)
        future.add_errback(self._failed, topic, n_events)

    @staticmethod
    def _acked(topic: str, n_events: int, _metadata: object) -> None:
        metrics.RECORDS_SENT.labels(topic=topic).inc()
        if n_events:
            metrics.EVENTS_SENT.inc(n_events)

    @staticmethod
    def _failed(topic: str, n_events: int, exc: BaseException) -> None:
        metrics.SEND_ERRORS.labels(topic=topic).inc()
        log.warning("send to %s failed (%d events lost): %r", topic, n_events, exc)
