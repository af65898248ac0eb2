"""Events to `fs.access` as keyed batch records, rejections to `fs.dlq`; a disk spool when Kafka is down.

Keying by `service/instance` keeps one instance's events on one partition, in order, and lets a
record carry a batch envelope of many events (far fewer, larger records than one per request).

Delivery with a `Spool` (without one, a record that fails is counted and lost):

- direct: records go to the producer, which batches, compresses and retries on its own for up to
  `delivery_timeout_ms`, one request in flight per broker so retries keep order; a broker blip
  shorter than that costs nothing. The sink holds each record until it is acknowledged.
- spooling: the first record that fails for a reason other than itself (timeout, broker gone)
  switches the sink to the spool. Every record not yet acknowledged goes to the spool, in the
  order it was sent, and the producer that held them is discarded unsent, so none of them can
  reach Kafka ahead of the others later (kafka-python cannot cancel a record otherwise). While
  the spool holds anything, new records are appended behind: nothing overtakes a spooled record.
  A background thread probes the bootstrap servers (a TCP connect) and, once one answers,
  replays the spool in order through a new producer, chunk by chunk, each chunk acknowledged
  before it leaves the spool; empty, the sink sends directly again. A spool left by an earlier
  process is replayed first, and a sink that cannot reach Kafka at start spools from the start.
- back-pressure: when the spool is full, `send_events` / `send_rejection` wait up to
  `backpressure_wait_s` for the replay to make room, then raise `BackPressure`. A call is all or
  nothing: when it raises, none of its events were taken and the caller still owns them, so a
  source can stop reading (a file tail keeps its checkpoint; an HTTP endpoint answers 503) or
  drop and count (UDP syslog cannot push back). Waiting first absorbs a spool that is full for a
  moment; raising rather than blocking for ever leaves the source in control. Both are logged
  and in the metrics (`foresight_ingest_backpressure_seconds_total`, `..._raised_total`).

Duplicates, counted in `foresight_ingest_records_duplicated_total` by reason: a record moved to the
spool may already have been acknowledged on its way (`acked_after_spooling`: the answer came after
the switch), and a replay chunk that fails part-way leaves records Kafka did take behind the one
that failed, so they are replayed again (`replay_partial`). A request whose answer was lost may
also be written twice by the producer's own retry, which no client can see. Every event carries
its `id`, so downstream drops duplicates: delivery is at least once, in order per key.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any

from kafka import errors as kerr
from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from infra.core.kafka_admin import kafka_producer
from infra.core.settings import KafkaSettings
from infra.core.spool import Record, Spool, SpoolFull, record_size
from ingest import metrics
from ingest.compat import kafka_python as kafka_internals
from ingest.schemas import AccessEvent, MetricSample, Rejection, encode_batch

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 900_000  # under the producer's 1 MiB max_request_size, with room for key and overhead
BATCH_SIZE = 512 * 1024  # producer batch per partition: several envelope records per request
DELIVERY_TIMEOUT_MS = 30_000  # how long the producer retries a record in memory before the spool takes it
MAX_BLOCK_MS = 5_000  # longest `send` waits for metadata or buffer space before the spool takes over

# Errors about the record itself: replaying it could never succeed, so it is counted and dropped.
_RECORD_FATAL: tuple[type[BaseException], ...] = (
    kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError, kerr.CorruptRecordError,
    kerr.InvalidRecordError, kerr.InvalidTopicError, kerr.UnsupportedCompressionTypeError,
)

# Process-wide like those of `ingest.metrics` (a second registration would fail).
SPOOL_BYTES = Gauge("foresight_ingest_spool_bytes", "Bytes in the disk spool waiting to be replayed.")
SPOOL_RECORDS = Gauge("foresight_ingest_spool_records", "Records in the disk spool waiting to be replayed.")
SPOOLING = Gauge("foresight_ingest_spooling", "1 while new records go to the disk spool instead of Kafka.")
RECORDS_SPOOLED = Counter(
    "foresight_ingest_records_spooled", "Records written to the disk spool (Kafka unreachable).", ["topic"])
RECORDS_REPLAYED = Counter(
    "foresight_ingest_records_replayed", "Spooled records acknowledged by Kafka on replay.", ["topic"])
RECORDS_DUPLICATED = Counter(
    "foresight_ingest_records_duplicated",
    "Records that may reach Kafka twice (downstream drops their events by id).", ["reason"])
BACKPRESSURE_SECONDS = Counter(
    "foresight_ingest_backpressure_seconds", "Seconds sends waited for room in a full spool.")
BACKPRESSURE_RAISED = Counter(
    "foresight_ingest_backpressure_raised", "Sends refused with BackPressure: the spool stayed full.")

_Pending = tuple[str, bytes, bytes, int]  # topic, key, value, events in it


class BackPressure(Exception):
    """The spool is full and stayed full for `waited_s`: none of the call's events were taken."""

    def __init__(self, waited_s: float, spool_bytes: int, spool_max_bytes: int) -> None:
        super().__init__(f"ingest spool full ({spool_bytes}/{spool_max_bytes} bytes) after waiting {waited_s:.1f}s; "
                         "Kafka is unreachable and nothing of this call was taken")
        self.waited_s = waited_s
        self.spool_bytes = spool_bytes
        self.spool_max_bytes = spool_max_bytes


_service_instance = attrgetter("service", "instance")  # an event's key, as a tuple (C speed)


def producer_config(
    kafka: KafkaSettings,
    *,
    client_id: str = "foresight-ingest",
    batch_size: int = BATCH_SIZE,
    delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS,
    max_block_ms: int = MAX_BLOCK_MS,
) -> dict[str, Any]:
    """KafkaProducer tuning of the sink (`kafka_producer` adds the bootstrap list and the cluster's SASL/TLS);
    `ingest.bench` gives the naive shipper the very same.

    acks=all; one request in flight per broker, so a retried batch is never overtaken by the next;
    no idempotence: Tansu (memory storage) forgets producer ids when restarted and then fails the
    idempotent producer for good. Retries are bounded by time (`delivery_timeout_ms`), not count.
    """
    return {
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        "compression_type": kafka.compression or None,
        "linger_ms": kafka.linger_ms,
        "batch_size": batch_size,
        "retry_backoff_ms": 200,
        "reconnect_backoff_max_ms": 2_000,  # notice a returning broker within seconds, not 30 s
        "request_timeout_ms": min(30_000, delivery_timeout_ms - kafka.linger_ms),
        "delivery_timeout_ms": delivery_timeout_ms,
        "max_block_ms": max_block_ms,
        "bootstrap_timeout_ms": max_block_ms,  # a broker that is down: spool after seconds, not 30 s
    }


def tcp_probe(bootstrap_servers: str, timeout_s: float = 1.0) -> Callable[[], bool]:
    """True when any bootstrap server accepts a TCP connection: cheap enough to ask every second."""
    addresses = [(h.strip().strip("[]"), int(p)) for h, p in (s.rsplit(":", 1) for s in bootstrap_servers.split(","))]

    def probe() -> bool:
        for address in addresses:
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout_s):
                return True
        return False

    return probe


class KafkaSink:
    """Sends are asynchronous; `flush` returns once every record is acknowledged or spooled.

    One thread sends (the source's); the producer's and the replayer's threads run beside it.
    Pass `producer` to use that one for good (it is then never replaced: tests), or leave it out
    to have the sink build its producers from `kafka` (or with `producer_factory`).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        batch_max: int = 500,
        *,
        spool: Spool | None = None,
        producer: Any = None,
        producer_factory: Callable[[], Any] | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
        client_id: str = "foresight-ingest",
        batch_size: int = BATCH_SIZE,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS,
        max_block_ms: int = MAX_BLOCK_MS,
        backpressure_wait_s: float = 1.0,
        probe: Callable[[], bool] | None = None,
        replay_chunk: int = 256,
        retry_backoff_s: tuple[float, float] = (0.2, 2.0),
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if spool is not None and spool.max_bytes < 2 * max_record_bytes:
            raise ValueError("the spool must hold at least two records of max_record_bytes")
        self.topic_access = kafka.topic_access
        self.topic_dlq = kafka.topic_dlq
        self.topic_metrics = kafka.topic_metrics
        self.batch_max = batch_max
        self.max_record_bytes = max_record_bytes
        self.backpressure_wait_s = backpressure_wait_s
        self.replay_chunk = replay_chunk
        self._backoff = retry_backoff_s
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self._spool = spool
        self._probe = probe if probe is not None else tcp_probe(kafka.bootstrap_servers)
        self._factory: Callable[[], Any] | None = None
        self._producer: Any = producer
        self._retired: list[Any] = []  # discarded producers, closed by the replayer
        if producer is None:
            self._factory = producer_factory or (lambda: kafka_producer(kafka, **producer_config(
                kafka, client_id=client_id, batch_size=batch_size, delivery_timeout_ms=delivery_timeout_ms,
                max_block_ms=max_block_ms)))
            try:
                self._producer = self._factory()
            except KafkaError as e:  # no broker answers: fine while there is a spool to fill
                if spool is None:
                    raise
                log.warning("ingest: Kafka unreachable at start (%r); spooling to %s", e, spool.directory)
        # seq -> record handed to the producer and not yet acknowledged; popped by whoever comes
        # first: the ack callback (producer thread) or the switch to the spool.
        self._inflight: dict[int, _Pending] = {}
        self._seq = itertools.count()
        self._failed_seqs: deque[int] = deque()  # failures the producer thread reported
        self._overflow: list[Record] = []  # taken, in order, but the full spool could not hold them yet
        self._lock = threading.Condition()
        self._spooling = spool is not None and (not spool.empty or self._producer is None)
        self._full_since: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._replayer: threading.Thread | None = None
        if spool is not None:
            self._update_gauges()
            self._replayer = threading.Thread(target=self._replay_loop, name="ingest-spool-replay", daemon=True)
            self._replayer.start()

    # -- the caller's side -------------------------------------------------------------------

    def send_events(self, events: list[AccessEvent]) -> None:
        """One record per key and chunk of at most `batch_max` events (fewer if it would be too large).

        Raises `BackPressure` (having taken none of `events`) when the spool is full and stays full.
        """
        keys = list(map(_service_instance, events))
        by_key: dict[str, list[AccessEvent]] = {}
        if len(set(keys)) == 1:  # the usual case (one file, one instance): no per-event grouping
            service, instance = keys[0]
            by_key[f"{service}/{instance}"] = events
        else:
            for (service, instance), e in zip(keys, events, strict=True):
                key = f"{service}/{instance}"
                group = by_key.get(key)
                if group is None:
                    by_key[key] = [e]
                else:
                    group.append(e)
        records: list[_Pending] = []
        topic = self.topic_access
        for key, group in by_key.items():
            key_bytes = key.encode()
            for start in range(0, len(group), self.batch_max):
                for chunk, value in self._records(group[start:start + self.batch_max]):
                    records.append((topic, key_bytes, value, len(chunk)))
        self._deliver(records)

    def send_metrics(self, samples: list[MetricSample]) -> None:
        """Metric samples to `fs.metrics`, batched per service/instance like events (same back-pressure)."""
        by_key: dict[str, list[MetricSample]] = {}
        for sample in samples:
            by_key.setdefault(f"{sample.service}/{sample.instance}", []).append(sample)
        records: list[_Pending] = []
        for key, group in by_key.items():
            for start in range(0, len(group), self.batch_max):
                for _, value in self._records(group[start:start + self.batch_max]):
                    records.append((self.topic_metrics, key.encode(), value, 0))
        self._deliver(records)

    def send_rejection(self, rej: Rejection) -> None:
        """Raises `BackPressure` like `send_events` (the rejection was then not taken)."""
        self._deliver([(self.topic_dlq, rej.source.encode(), rej.model_dump_json().encode(), 0)])
        metrics.REJECTIONS.labels(source=rej.source, reason=rej.reason).inc()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record handed over so far is acknowledged by Kafka or written to the spool.

        Spooled records are not waited for (`wait_replayed` does). Without a spool this is the
        producer's flush: `KafkaTimeoutError` when `timeout` passes first.
        """
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(timeout=timeout)
            except KafkaError:
                if self._spool is None:
                    raise
                with self._lock:
                    self._to_spool_locked(everything=True)  # still unanswered: keep them on disk instead
        if self._spool is not None:
            with self._lock:
                self._to_spool_locked()
            self._spool.sync()

    def wait_replayed(self, timeout: float) -> bool:
        """True once the spool is replayed and new records go straight to Kafka again."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._lock:
            while self._spooling:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))
            return True

    @property
    def spooling(self) -> bool:
        return self._spooling

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush, stop replaying, close the producer; what is still spooled waits for the next start."""
        self.flush(timeout)
        if self._spool is None:
            self._producer.close(timeout=timeout)
            return
        self._stop.set()
        self._wake.set()
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            kafka_internals.abort(producer)  # all it held is acknowledged or spooled; a replay chunk waiting ends
            self._retired.append(producer)
        if self._replayer is not None:
            self._replayer.join(timeout=10.0)
        self._close_retired(timeout)
        with self._lock:
            self._to_spool_locked(everything=True)
            self._spool_overflow_locked()
            if self._overflow:
                log.error("ingest: %d records lost at close: the spool is full", len(self._overflow))
        self._spool.close()

    # -- encoding ----------------------------------------------------------------------------

    def _records(self, chunk: list[Any]) -> Iterator[tuple[list[Any], bytes]]:
        """Halve a chunk until each record fits; a lone oversized event still goes (and fails loudly)."""
        value = encode_batch(chunk)
        if len(value) <= self.max_record_bytes or len(chunk) == 1:
            yield chunk, value
            return
        mid = len(chunk) // 2
        yield from self._records(chunk[:mid])
        yield from self._records(chunk[mid:])

    # -- delivery ----------------------------------------------------------------------------

    def _deliver(self, records: list[_Pending]) -> None:
        if self._spool is None:
            for topic, key, value, n in records:
                self._send(topic, key, value, n)
            return
        # Held while sending, so the replayer cannot switch modes in the middle of a call.
        with self._lock:
            if self._failed_seqs:
                self._to_spool_locked()
            if self._spooling and self._append_waiting(records):
                return
            for i, (topic, key, value, n) in enumerate(records):
                if not self._send(topic, key, value, n):  # the producer refused: it and the rest go to the spool
                    self._to_spool_locked(everything=True)
                    self._overflow.extend((t, k, v) for t, k, v, _ in records[i + 1:])
                    self._spool_overflow_locked()
                    return

    def _send(self, topic: str, key: bytes, value: bytes, n_events: int) -> bool:
        """Hand one record to the producer; False when it refused it for a reason worth spooling."""
        seq = next(self._seq)
        if self._spool is not None:
            self._inflight[seq] = (topic, key, value, n_events)
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as e:  # no metadata or no buffer space in time; record too large
            if self._spool is None or isinstance(e, _RECORD_FATAL):
                self._inflight.pop(seq, None)
                self._lost(topic, n_events, e)
                return True
            log.warning("ingest: Kafka refused a record (%r)", e)
            return False
        future.add_callback(self._acked, seq, topic, n_events)
        future.add_errback(self._failed, seq, topic, n_events)
        return True

    def _acked(self, seq: int, topic: str, n_events: int, _metadata: object) -> None:
        """Producer thread: the record is in Kafka."""
        if self._spool is not None and self._inflight.pop(seq, None) is None:
            # Already moved to the spool after an earlier record failed: the replay sends it again.
            RECORDS_DUPLICATED.labels(reason="acked_after_spooling").inc()
        metrics.RECORDS_SENT.labels(topic=topic).inc()
        if n_events:
            metrics.EVENTS_SENT.inc(n_events)

    def _failed(self, seq: int, topic: str, n_events: int, exc: BaseException) -> None:
        """Producer thread: short and lock-free (the sending thread may hold the lock, waiting on us)."""
        if self._spool is None:
            self._lost(topic, n_events, exc)
        elif isinstance(exc, _RECORD_FATAL):
            if self._inflight.pop(seq, None) is not None:
                self._lost(topic, n_events, exc)
        elif seq in self._inflight:
            self._failed_seqs.append(seq)
            self._wake.set()

    @staticmethod
    def _lost(topic: str, n_events: int, exc: BaseException) -> None:
        metrics.SEND_ERRORS.labels(topic=topic).inc()
        log.warning("send to %s failed (%d events lost): %r", topic, n_events, exc)

    # -- the spool (callers hold `_lock`) ------------------------------------------------------

    def _to_spool_locked(self, everything: bool = False) -> None:
        """After a failure (or with `everything`): every unacknowledged record to the spool, in send order.

        The later ones go too, not only the failed one, so that none of them can overtake it; and
        the producer holding them is discarded so that it cannot deliver them behind our back.
        """
        if not self._failed_seqs and not everything:
            return
        self._failed_seqs.clear()
        moved: list[Record] = []
        for seq in sorted(self._inflight.copy()):
            rec = self._inflight.pop(seq, None)
            if rec is not None:  # else acknowledged meanwhile
                moved.append(rec[:3])
        if not moved:
            return
        if not self._spooling:
            log.warning("ingest: Kafka unreachable; spooling records to %s", self._spool_dir())
        self._spooling = True
        if self._factory is not None and self._producer is not None and not self._stop.is_set():
            kafka_internals.abort(self._producer)
            self._retired.append(self._producer)
            self._producer = None
            self._wake.set()
        self._overflow.extend(moved)
        self._spool_overflow_locked()

    def _spool_overflow_locked(self) -> bool:
        """Write what waits in memory to the spool, as much as fits; False while some is left."""
        assert self._spool is not None
        if self._overflow:
            fits, free = 0, self._spool.free_bytes
            for rec in self._overflow:
                free -= record_size(*rec)
                if free < 0:
                    break
                fits += 1
            if fits:
                done, self._overflow = self._overflow[:fits], self._overflow[fits:]
                try:
                    self._spool.append(done)
                except SpoolFull as e:  # the disk itself refused
                    self._overflow[:0] = done
                    log.error("ingest: spool write failed: %s", e)
                else:
                    for topic, _, _ in done:
                        RECORDS_SPOOLED.labels(topic=topic).inc()
            self._update_gauges()
        return not self._overflow

    def _append_waiting(self, records: list[_Pending]) -> bool:
        """Spool `records` behind everything before them, waiting up to `backpressure_wait_s` for room.

        False when, while it waited, the replayer emptied the spool and went back to direct sends.
        """
        assert self._spool is not None
        batch = [(t, k, v) for t, k, v, _ in records]
        start = time.monotonic()
        deadline = start + self.backpressure_wait_s
        while True:
            if not self._spooling:
                self._end_backpressure(start)
                return False
            if self._spool_overflow_locked():
                try:
                    self._spool.append(batch)
                    break
                except SpoolFull:
                    pass
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
                log.warning("ingest: spool full (%d bytes); applying back-pressure to the source",
                            self._spool.pending_bytes)
            if now >= deadline:
                BACKPRESSURE_SECONDS.inc(now - start)
                BACKPRESSURE_RAISED.inc()
                raise BackPressure(now - start, self._spool.pending_bytes, self._spool.max_bytes)
            self._lock.wait(deadline - now)  # the replayer notifies when it made room
        self._end_backpressure(start)
        for topic, _, _ in batch:
            RECORDS_SPOOLED.labels(topic=topic).inc()
        self._update_gauges()
        return True

    def _end_backpressure(self, start: float) -> None:
        if self._full_since is not None:
            BACKPRESSURE_SECONDS.inc(time.monotonic() - start)
            log.info("ingest: spool has room again after %.1fs of back-pressure", time.monotonic() - self._full_since)
            self._full_since = None

    def _update_gauges(self) -> None:
        assert self._spool is not None
        SPOOL_BYTES.set(self._spool.pending_bytes)
        SPOOL_RECORDS.set(len(self._spool) + len(self._overflow))
        SPOOLING.set(1 if self._spooling else 0)

    def _spool_dir(self) -> str:
        return str(self._spool.directory) if self._spool is not None else "-"

    # -- the replayer thread -----------------------------------------------------------------

    def _replay_loop(self) -> None:
        assert self._spool is not None
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                self._close_retired(5.0)
                progressed = self._replay_step()
            except Exception:  # never let the thread die: the spool would never drain
                log.exception("ingest: spool replay failed; retrying")
                progressed = False
            self._spool.maybe_sync()
            if progressed:
                delay = self._backoff[0]
                continue
            self._wake.wait(delay if self._spooling else 1.0)
            self._wake.clear()
            delay = min(delay * 2, self._backoff[1]) if self._spooling else self._backoff[0]

    def _replay_step(self) -> bool:
        """Replay one chunk in order; True when all of it reached Kafka."""
        assert self._spool is not None
        with self._lock:
            self._to_spool_locked()
            self._spool_overflow_locked()
            if not self._spooling:
                return False
            chunk = self._spool.peek(self.replay_chunk)
        if self._stop.is_set() or not self._probe():
            return False
        producer = self._producer
        if producer is None:
            producer = self._new_producer()
            if producer is None:
                return False
        if not chunk:
            with self._lock:
                if self._spool.empty and not self._overflow:
                    self._spooling = False
                    self._update_gauges()
                    self._lock.notify_all()
                    log.info("ingest: spool replayed; sending to Kafka directly again")
            return False
        done, later_acked = self._replay_chunk(producer, chunk)
        if later_acked:
            RECORDS_DUPLICATED.labels(reason="replay_partial").inc(later_acked)
        if done:
            with self._lock:
                self._spool.commit(done)
                self._update_gauges()
                self._lock.notify_all()
            for rec in chunk[:done]:
                RECORDS_REPLAYED.labels(topic=rec.topic).inc()
                metrics.RECORDS_SENT.labels(topic=rec.topic).inc()
                if rec.topic == self.topic_access:
                    metrics.EVENTS_SENT.inc(_event_count(rec.value))
        return done == len(chunk)

    def _replay_chunk(self, producer: Any, chunk: list[Any]) -> tuple[int, int]:
        """Send a chunk and wait for its answers: (records acknowledged in a row from its start,
        records acknowledged after the first failure, which stay in the spool and will go again)."""
        futures: list[Any] = []
        for rec in chunk:
            try:
                futures.append(producer.send(rec.topic, key=rec.key, value=rec.value))
            except _RECORD_FATAL as e:
                futures.append(e)
            except KafkaError as e:
                log.info("ingest: replay paused, Kafka refused a record: %r", e)
                break
        done = 0
        for rec, fut in zip(chunk, futures, strict=False):
            try:
                if isinstance(fut, BaseException):
                    raise fut
                fut.get(timeout=self._delivery_timeout_s + 5)
            except _RECORD_FATAL as e:  # could never be delivered: drop it rather than block the spool
                n = _event_count(rec.value) if rec.topic == self.topic_access else 0
                self._lost(rec.topic, n, e)
            except KafkaError as e:
                log.info("ingest: replay paused: %r", e)
                break
            done += 1
        later = sum(1 for f in futures[done + 1:] if not isinstance(f, BaseException) and f.succeeded())
        return done, later

    def _new_producer(self) -> Any:
        if self._factory is None:
            return None
        try:
            producer = self._factory()
        except KafkaError as e:
            log.info("ingest: no producer yet (%r); retrying", e)
            return None
        with self._lock:
            if self._stop.is_set():
                self._retired.append(producer)
                return None
            self._producer = producer
        return producer

    def _close_retired(self, timeout: float | None) -> None:
        while True:
            try:
                producer = self._retired.pop()
            except IndexError:
                return
            with contextlib.suppress(KafkaError):
                producer.close(timeout=timeout)


def _event_count(value: bytes) -> int:
    """Events in an `fs.access` record, read off the envelope's head (`{"v":1,"count":N,...`)."""
    if value.startswith(b'{"v":1,"count":'):
        end = value.find(b",", 15)
        with contextlib.suppress(ValueError):
            return int(value[15:end])
    return 1
