"""The raw record: `fs.access` -> ClickHouse `access_events`, `fs.metrics` -> `metric_samples`.

A consumer group of its own (not the feature worker's), so the record is written however far the
windows are behind, and either can be restarted alone. Delivery into ClickHouse is at least once:

- records are polled into a batch (up to `batch_max_rows` rows or `flush_s` seconds), decoded and
  checked, and written with one insert per table;
- offsets are committed only after ClickHouse acknowledged the inserts (and the dead-letter
  records were acknowledged by Kafka), so a crash anywhere before the commit re-delivers the batch;
- a re-delivered row has the same sorting key (`access_events`: service, instance, ts, id;
  `metric_samples`: service, name, instance, ts_ms, labels), so both ReplacingMergeTree tables
  count it once under `FINAL`;
- while ClickHouse is down the batch is retried with backoff and nothing is committed or polled
  (the group may evict the consumer after `max.poll.interval.ms`: its partitions are then read
  again by whoever gets them, which only re-delivers).

Both single events and batch envelopes are accepted. A record or event that cannot be a row (not
JSON, a missing field, a string where a number belongs) goes to `fs.dlq` with its reason and is
never written, so one bad event cannot block the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import msgspec
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tenacity import Retrying, retry_if_exception_type, wait_exponential

from ingest.schemas import Rejection, decode_access_record, truncate_raw

log = logging.getLogger(__name__)

SOURCE = "record-sink"  # `source` of this sink's dead-letter records

_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class AccessRow(msgspec.Struct, gc=False):
    """What `access_events` takes of an `fs.access` event (ingest.schemas.AccessEvent), strictly typed."""

    id: str
    ts: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    service: str
    instance: str
    method: str
    route: str
    status: Annotated[int, msgspec.Meta(ge=0, le=999)]
    latency_ms: _NonNeg
    bytes_sent: _Count
    source: str


class MetricRow(msgspec.Struct, gc=False):
    """What `metric_samples` takes of an `fs.metrics` sample (ingest.schemas.MetricSample)."""

    ts: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    service: str
    instance: str
    name: str
    value: float
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class _AccessEnvelope(msgspec.Struct, gc=False):
    events: list[AccessRow]


class _MetricEnvelope(msgspec.Struct, gc=False):
    events: list[MetricRow]


_ACCESS_ENVELOPE = msgspec.json.Decoder(_AccessEnvelope)
_METRIC_ENVELOPE = msgspec.json.Decoder(_MetricEnvelope)
_ACCESS_ONE = msgspec.json.Decoder(AccessRow)
_METRIC_ONE = msgspec.json.Decoder(MetricRow)

ACCESS_COLUMNS = ("ts_ms", "id", "service", "instance", "method", "route", "status", "latency_ms", "bytes_sent",
                  "source")
METRIC_COLUMNS = ("ts_ms", "service", "instance", "name", "value", "label_keys", "label_values")


def access_row(e: AccessRow) -> tuple[Any, ...]:
    return (e.ts, e.id, e.service, e.instance, e.method, e.route, e.status, e.latency_ms, e.bytes_sent, e.source)


def metric_row(m: MetricRow) -> tuple[Any, ...]:
    keys = sorted(m.labels)  # one order, so the same labels always make the same sorting key
    return (m.ts, m.service, m.instance, m.name, m.value, keys, [m.labels[k] for k in keys])


@dataclass
class Decoded:
    """Rows of a batch of Kafka records, and what could not become a row."""

    access: list[tuple[Any, ...]] = field(default_factory=list)
    metrics: list[tuple[Any, ...]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _reject(decoded: Decoded, reason: str, detail: str, raw: bytes | str) -> None:
    decoded.rejections.append(Rejection(source=SOURCE, reason=reason, detail=detail[:500], raw=truncate_raw(raw),
                                        ts_received=int(time.time() * 1000)))


def decode_into(decoded: Decoded, value: bytes | None, *, metrics: bool) -> None:
    """One Kafka record (a single event or a batch envelope) into rows; bad events into rejections.

    Fast path: the whole record through a strict typed decoder. Anything it refuses is taken apart
    event by event, so each bad event is rejected with its own reason and the good ones are kept.
    """
    kind = "metric_sample" if metrics else "access_event"
    rows, to_row = (decoded.metrics, metric_row) if metrics else (decoded.access, access_row)
    if not value:
        _reject(decoded, "empty_record", "a record without a value", b"")
        return
    envelope, one = (_METRIC_ENVELOPE, _METRIC_ONE) if metrics else (_ACCESS_ENVELOPE, _ACCESS_ONE)
    try:
        if value.lstrip()[:1] == b"{" and b'"events"' in value:
            rows.extend(map(to_row, envelope.decode(value).events))  # type: ignore[arg-type]
        else:
            rows.append(to_row(one.decode(value)))  # type: ignore[arg-type]
        return
    except msgspec.DecodeError:
        pass
    try:
        items = decode_access_record(value)
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        _reject(decoded, "bad_json", f"not a JSON event or batch envelope: {exc}", value)
        return
    if not isinstance(items, list):
        _reject(decoded, "bad_envelope", "`events` is not a list", value)
        return
    target = MetricRow if metrics else AccessRow
    for item in items:
        try:
            rows.append(to_row(msgspec.convert(item, target)))  # type: ignore[arg-type]
        except msgspec.ValidationError as exc:
            _reject(decoded, f"bad_{kind}", str(exc), orjson.dumps(item) if item is not None else b"null")


def decode_batch(records: Iterable[tuple[str, bytes | None]], metrics_topic: str) -> Decoded:
    """(topic, value) pairs polled from `fs.access` and `fs.metrics` into rows and rejections."""
    decoded = Decoded()
    for topic, value in records:
        decode_into(decoded, value, metrics=topic == metrics_topic)
    return decoded


class RecordMetrics:
    """Prometheus metrics of the record sink, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ready = Gauge("foresight_record_ready", "1 once the consumer has joined its group and polls.",
                           registry=r)
        self.records = Counter("foresight_record_records", "Kafka records consumed.", ["topic"], registry=r)
        self.rows = Counter("foresight_record_rows_written", "Rows ClickHouse acknowledged.", ["table"], registry=r)
        self.rejected = Counter("foresight_record_rejected", "Events or records sent to the dead-letter topic.",
                                ["reason"], registry=r)
        self.write_errors = Counter("foresight_record_write_errors", "Failed writes, retried until they succeed: "
                                    "`clickhouse` inserts, `dlq` dead-letter sends.", ["target"], registry=r)
        self.commit_errors = Counter("foresight_record_commit_errors",
                                     "Offset commits refused (the batch is delivered again: idempotent).",
                                     registry=r)
        self.batch_seconds = Histogram("foresight_record_batch_seconds", "Insert and commit time of a batch.",
                                       registry=r)
        self.last_commit = Gauge("foresight_record_last_commit_timestamp_seconds",
                                 "Wall clock of the last committed batch.", registry=r)


class RowWriter(Protocol):
    def execute(self, query: str, params: Any = ...) -> Any: ...


class ClickHouseRecordWriter:
    """One insert per table; an exception means nothing may be committed."""

    def __init__(self, client: RowWriter, database: str) -> None:
        self.client = client
        self.access_sql = f"INSERT INTO {database}.access_events ({', '.join(ACCESS_COLUMNS)}) VALUES"
        self.metric_sql = f"INSERT INTO {database}.metric_samples ({', '.join(METRIC_COLUMNS)}) VALUES"

    def write(self, access: Sequence[tuple[Any, ...]], metrics: Sequence[tuple[Any, ...]]) -> None:
        if access:
            self.client.execute(self.access_sql, access)
        if metrics:
            self.client.execute(self.metric_sql, metrics)


DeadLetters = Callable[[list[Rejection]], None]  # sends and waits for Kafka's acknowledgement, raises if none


class RecordConsumer(Protocol):
    """The part of kafka-python's KafkaConsumer the sink uses."""

    def poll(self, timeout_ms: int = ..., max_records: int | None = ...) -> dict[Any, list[Any]]: ...

    def commit(self) -> None: ...

    def assignment(self) -> set[Any]: ...


class RecordSink:
    """The consume -> insert -> commit loop. I/O objects are passed in (see infra.workers)."""

    def __init__(self, consumer: RecordConsumer, writer: ClickHouseRecordWriter, dead_letters: DeadLetters,
                 metrics_topic: str, *, batch_max_rows: int = 50_000, flush_s: float = 1.0,
                 metrics: RecordMetrics | None = None, retry_max_s: float = 5.0) -> None:
        self.consumer, self.writer, self.dead_letters = consumer, writer, dead_letters
        self.metrics_topic = metrics_topic
        self.batch_max_rows, self.flush_s, self.retry_max_s = batch_max_rows, flush_s, retry_max_s
        self.metrics = metrics or RecordMetrics()

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; the batch in hand when it is set is written and committed first."""
        while not stop.is_set():
            self.step(stop)

    def step(self, stop: threading.Event) -> int:
        """Collect one batch, write it, commit it. Returns the rows written."""
        decoded = Decoded()
        deadline = time.monotonic() + self.flush_s
        polled_any = False
        while (len(decoded.access) + len(decoded.metrics) < self.batch_max_rows and time.monotonic() < deadline
               and not stop.is_set()):
            polled = self.consumer.poll(timeout_ms=max(1, int((deadline - time.monotonic()) * 1000)),
                                        max_records=500)
            if self.consumer.assignment():
                self.metrics.ready.set(1)
            for tp, records in polled.items():
                polled_any = True
                self.metrics.records.labels(tp.topic).inc(len(records))
                is_metrics = tp.topic == self.metrics_topic
                for r in records:
                    decode_into(decoded, r.value, metrics=is_metrics)
        if not polled_any:
            return 0
        with self.metrics.batch_seconds.time():
            if not self._retry(stop, lambda: self.writer.write(decoded.access, decoded.metrics), "clickhouse"):
                return 0  # stopped while ClickHouse was down: not committed, delivered again at the next start
            self.metrics.rows.labels("access_events").inc(len(decoded.access))
            self.metrics.rows.labels("metric_samples").inc(len(decoded.metrics))
            if decoded.rejections:
                if not self._retry(stop, lambda: self.dead_letters(decoded.rejections), "dlq"):
                    return 0
                for rej in decoded.rejections:
                    self.metrics.rejected.labels(rej.reason).inc()
            try:
                self.consumer.commit()
            except Exception as exc:  # a rebalance took the partitions: their new owner writes them again
                self.metrics.commit_errors.inc()
                log.warning("record sink: offset commit refused (%r); the batch will be written again", exc)
            else:
                self.metrics.last_commit.set(time.time())
        return len(decoded.access) + len(decoded.metrics)

    def _retry(self, stop: threading.Event, action: Callable[[], None], what: str) -> bool:
        """`action` until it succeeds (True) or `stop` is set (False), with exponential backoff."""

        def note(state: Any) -> None:
            self.metrics.write_errors.labels(what).inc()
            log.warning("record sink: %s write failed (%r); retrying", what, state.outcome.exception())

        def pause(seconds: float) -> None:
            stop.wait(seconds)

        retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.2, max=self.retry_max_s),
            stop=lambda _state: stop.is_set(),
            sleep=pause,
            before_sleep=note,
            reraise=True,
        )
        try:
            retrying(action)
        except Exception:
            if stop.is_set():
                return False
            raise
        return True
