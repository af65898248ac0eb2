"""The durable `DecisionSink`: every decision to `fs.decisions` and ClickHouse `decisions`, the
predictions behind them to ClickHouse `predictions`, and nothing dropped when either is down.

A publish is checked: each Kafka send is acknowledged (acks=all) and each ClickHouse insert
returns, or what did not get through goes to a disk spool (the one ingest uses, `infra.core.spool`)
in publish order. While the spool holds anything, new publishes queue behind it, so the record
keeps its order. A background thread replays the spool every `retry_s` seconds, oldest first,
each record leaving the spool only once its destination acknowledged it. A spool left by an
earlier process is replayed the same way.

Delivery is at least once: a send whose answer was lost is spooled and sent again. `decisions` and
`predictions` are ReplacingMergeTree tables keyed by what identifies a row (migration 0004), so a
row written twice counts once under FINAL; `fs.decisions` may carry a duplicate.

Nothing here needs Kafka or ClickHouse to be up to construct: the producer and the ClickHouse
client are built at the first delivery (so `foresight adapt --dry-run` runs without a broker).
A full spool makes `publish` raise `SpoolFull`: the caller's round fails loudly rather than losing
a decision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Gauge

from infra.core.spool import Record, Spool, SpooledRecord
from lb_adapters.schemas import Decision, PredictionRecord

log = logging.getLogger(__name__)

CH_DECISIONS = "clickhouse:decisions"  # spool "topics" of rows bound for ClickHouse
CH_PREDICTIONS = "clickhouse:predictions"
DECISION_COLUMNS = ("ts_ms", "service", "actuator", "target", "action", "before", "after", "reason",
                    "prediction_refs", "dry_run", "outcome")
PREDICTION_COLUMNS = ("ts_ms", "kind", "service", "instance", "model", "model_version", "horizon_s", "quantile",
                      "value")

PUBLISHED = Counter("foresight_decisions_published", "Decisions whose every write was acknowledged at once.")
SPOOLED = Counter("foresight_decision_records_spooled", "Records (Kafka or ClickHouse) that went to the decision "
                  "spool because their destination failed.", ["destination"])
REPLAYED = Counter("foresight_decision_records_replayed", "Spooled records acknowledged on replay.",
                   ["destination"])
FAILURES = Counter("foresight_decision_write_failures", "Failed writes (the records were spooled or kept).",
                   ["destination"])
SPOOL_RECORDS = Gauge("foresight_decision_spool_records", "Decision records waiting in the spool.")


class RowWriter(Protocol):
    """The part of clickhouse_driver.Client used here."""

    def execute(self, query: str, params: Any = ...) -> Any: ...

    def disconnect(self) -> None: ...


class Producer(Protocol):
    """The part of kafka-python's KafkaProducer used here."""

    def send(self, topic: str, key: bytes | None = ..., value: bytes | None = ...) -> Any: ...

    def flush(self, timeout: float | None = ...) -> None: ...

    def close(self, timeout: float | None = ...) -> None: ...


def prediction_refs(decision: Decision, predictions: Sequence[PredictionRecord]) -> list[str]:
    """The refs of the predictions a decision rests on: those of its service for its target's instance
    or the whole service; without any, the decision's own `prediction_ref` (model@version)."""
    instance = decision.target.rsplit("/", 1)[-1]
    refs = [p.ref() for p in predictions if p.service == decision.service and p.instance in ("*", instance)]
    return sorted(set(refs)) or ([decision.prediction_ref] if decision.prediction_ref else [])


def decision_row(d: Decision, refs: list[str]) -> list[Any]:
    return [d.ts, d.service, d.actuator, d.target, d.action, d.before, d.after, d.reason, refs, int(d.dry_run),
            d.outcome]


def prediction_row(p: PredictionRecord) -> list[Any]:
    return [p.ts, p.kind, p.service, p.instance, p.model, p.model_version, p.horizon_s, p.quantile, p.value]


def records_of(topic: str, decisions: Sequence[Decision], predictions: Sequence[PredictionRecord]) -> list[Record]:
    """What one publish writes, in order: each decision on `topic`, then the ClickHouse rows."""
    out: list[Record] = [(topic, d.service.encode(), d.model_dump_json().encode()) for d in decisions]
    rows = [decision_row(d, prediction_refs(d, predictions)) for d in decisions]
    if rows:
        out.append((CH_DECISIONS, None, orjson.dumps(rows)))
    if predictions:
        out.append((CH_PREDICTIONS, None, orjson.dumps([prediction_row(p) for p in predictions])))
    return out


def _destination(topic: str) -> str:
    return "clickhouse" if topic.startswith("clickhouse:") else "kafka"


class DecisionLog:
    """`DecisionSink` over Kafka and ClickHouse with a disk spool; see the module docstring."""

    def __init__(self, topic: str, database: str, spool: Spool, *, producer_factory: Callable[[], Producer],
                 clickhouse_factory: Callable[[], RowWriter], retry_s: float = 2.0,
                 send_timeout_s: float = 10.0, replay_chunk: int = 256) -> None:
        self.topic, self.spool = topic, spool
        self.sql = {CH_DECISIONS: f"INSERT INTO {database}.decisions ({', '.join(DECISION_COLUMNS)}) VALUES",
                    CH_PREDICTIONS: f"INSERT INTO {database}.predictions ({', '.join(PREDICTION_COLUMNS)}) VALUES"}
        self._producer_factory, self._clickhouse_factory = producer_factory, clickhouse_factory
        self._producer: Producer | None = None
        self._clickhouse: RowWriter | None = None
        self.retry_s, self.send_timeout_s, self.replay_chunk = retry_s, send_timeout_s, replay_chunk
        self._lock = threading.RLock()  # one writer at a time: publish or replay, so order holds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._replayer = threading.Thread(target=self._replay_loop, name="decision-spool-replay", daemon=True)
        SPOOL_RECORDS.set(len(spool))
        self._replayer.start()

    # -- DecisionSink ------------------------------------------------------------------------

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        """Write or spool; returns once every record is acknowledged or on disk (raises `SpoolFull` else)."""
        records = records_of(self.topic, decisions, predictions)
        if not records:
            return
        with self._lock:
            if not self.spool.empty:
                self._to_spool(records)  # behind what waits already: nothing overtakes a spooled record
                return
            done = self._deliver(records)
            if done < len(records):
                self._to_spool(records[done:])
            elif decisions:
                PUBLISHED.inc(len(decisions))

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records waiting in the spool."""
        return len(self.spool)

    def wait_replayed(self, timeout: float) -> bool:
        """True once the spool is empty (everything written); asks for a replay now."""
        deadline = time.monotonic() + timeout
        while not self.spool.empty and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.1)
        return self.spool.empty

    def close(self) -> None:
        """Stop replaying (what is left stays spooled for the next start), close the clients."""
        self._stop.set()
        self._wake.set()
        self._replayer.join(timeout=self.send_timeout_s + 5)
        with self._lock:
            self._reset_producer()
            if self._clickhouse is not None:
                self._clickhouse.disconnect()
            self.spool.close()

    # -- delivery ----------------------------------------------------------------------------

    def _to_spool(self, records: list[Record]) -> None:
        self.spool.append(records)
        self.spool.sync()
        for topic, _, _ in records:
            SPOOLED.labels(_destination(topic)).inc()
        SPOOL_RECORDS.set(len(self.spool))
        self._wake.set()

    def _deliver(self, records: Sequence[Record]) -> int:
        """Write `records` in order, a run of one destination at a time; how many got through (a prefix)."""
        done = 0
        for dest, run in groupby(records, key=lambda r: _destination(r[0])):
            batch = list(run)
            ok = self._send_kafka(batch) if dest == "kafka" else self._insert_clickhouse(batch)
            if not ok:
                FAILURES.labels(dest).inc()
                return done
            done += len(batch)
        return done

    def _send_kafka(self, batch: list[Record]) -> bool:
        try:
            if self._producer is None:
                self._producer = self._producer_factory()
            futures = [self._producer.send(topic, key=key, value=value) for topic, key, value in batch]
            self._producer.flush(timeout=self.send_timeout_s)
            for future in futures:
                future.get(timeout=0)  # raises the send's error; a timeout if it is still unanswered
        except Exception as exc:  # broker away, timeout, metadata: all spooled and retried
            log.warning("decision log: Kafka did not acknowledge %d decision(s): %r", len(batch), exc)
            self._reset_producer()  # its unsent records must not arrive later, behind the replay
            return False
        return True

    def _insert_clickhouse(self, batch: list[Record]) -> bool:
        try:
            if self._clickhouse is None:
                self._clickhouse = self._clickhouse_factory()
            for topic, _, value in batch:
                self._clickhouse.execute(self.sql[topic], [tuple(row) for row in orjson.loads(value)])
        except Exception as exc:
            log.warning("decision log: ClickHouse did not take %d record(s): %r", len(batch), exc)
            if self._clickhouse is not None:
                self._clickhouse.disconnect()
            self._clickhouse = None
            return False
        return True

    def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # closing a producer whose broker is gone may complain: it is dropped anyway
                log.debug("decision log: closing the producer: %r", exc)

    # -- replay ------------------------------------------------------------------------------

    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.retry_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.replay_once()
            except Exception:  # never let the replayer die: the spool would then wait for a restart
                log.exception("decision log: replay failed; retrying in %.1f s", self.retry_s)

    def replay_once(self) -> int:
        """Replay spooled records oldest first until the spool is empty or a write fails; how many left it."""
        replayed = 0
        with self._lock:
            while not self.spool.empty and not self._stop.is_set():
                chunk: list[SpooledRecord] = self.spool.peek(self.replay_chunk)
                done = self._deliver([(r.topic, r.key, r.value) for r in chunk])
                self.spool.commit(done)
                for r in chunk[:done]:
                    REPLAYED.labels(_destination(r.topic)).inc()
                replayed += done
                SPOOL_RECORDS.set(len(self.spool))
                if done < len(chunk):
                    break
        if replayed:
            log.info("decision log: replayed %d spooled record(s); %d left", replayed, len(self.spool))
        return replayed
