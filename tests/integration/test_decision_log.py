"""The durable decision log with a real broker that is down, then back: decisions published while it
is down are spooled (not dropped), survive the process that published them, and reach `fs.decisions`
and ClickHouse `decisions` (with their `predictions`, joined through `prediction_refs`) once it
returns.

Its own Tansu on a free port (stopping the stack's would break other tests) and a scratch_db
ClickHouse database on the stack's server.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from infra.core.db import client as clickhouse_client
from infra.core.kafka_admin import ensure_topics, iter_topic
from infra.core.ports import free_port
from infra.core.settings import ClickHouseSettings, Settings
from infra.core.spool import Spool
from lb_adapters.decision_log import DecisionLog
from lb_adapters.schemas import Decision, PredictionRecord
from tests.integration.test_ingest_delivery import Broker

pytestmark = pytest.mark.timeout(180)
TS = 1_764_300_000_000




def open_log(broker: Broker, ch: ClickHouseSettings, spool_dir: Path) -> DecisionLog:
    def producer() -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=broker.kafka.bootstrap_servers, acks="all", max_block_ms=1_000,
                             bootstrap_timeout_ms=1_000, request_timeout_ms=2_000, delivery_timeout_ms=3_000)

    return DecisionLog(broker.kafka.topic_decisions, ch.database, Spool(spool_dir, 4 * 1024 * 1024),
                       producer_factory=producer, clickhouse_factory=lambda: clickhouse_client(ch), retry_s=0.5,
                       send_timeout_s=3.0)


def decisions_on_topic(broker: Broker) -> list[dict[str, object]]:
    return decisions_on_topic_named(broker, broker.kafka.topic_decisions)


def decisions_on_topic_named(where: Broker | Settings, topic: str) -> list[dict[str, object]]:
    return [orjson.loads(v) for v in iter_topic(where.kafka, topic, 60)]


def round_of(i: int) -> tuple[list[Decision], list[PredictionRecord]]:
    preds = [PredictionRecord(ts=TS + i, kind="weights", service="dl", instance=inst, model="latency",
                              model_version="v7", value=10.0 * (i + 1) + n) for n, inst in enumerate(("s1", "s2"))]
    decisions = [Decision(ts=TS + i, service="dl", actuator="haproxy", target=f"demo/{inst}", action="set_weight",
                          before=100.0, after=p.value, reason=f"round {i}", prediction_ref="latency@v7",
                          outcome="applied") for inst, p in zip(("s1", "s2"), preds, strict=True)]
    return decisions, preds


def test_decisions_published_while_the_broker_is_down_reach_clickhouse_once_it_is_back(
        scratch_db: ClickHouseSettings, tmp_path: Path) -> None:
    broker = Broker(free_port(), tmp_path / "tansu.log")  # not started yet: the broker is down
    spool_dir = tmp_path / "decision-spool"
    log = open_log(broker, scratch_db, spool_dir)  # lazy: building it needs no broker
    for i in range(3):
        log.publish(*round_of(i))  # returns: the decisions are on disk, not lost
    assert log.pending >= 3 * 2
    cl = clickhouse_client(scratch_db)
    try:
        # Order holds: the ClickHouse rows wait behind the Kafka records they were published with.
        assert cl.execute(f"SELECT count() FROM {scratch_db.database}.decisions") == [(0,)]
        log.close()  # the publishing process ends while the broker is still down

        broker.start()
        try:
            log = open_log(broker, scratch_db, spool_dir)  # a new process finds the spool and replays it
            assert log.wait_replayed(60), f"{log.pending} records still spooled"
            log.publish(*round_of(3))  # back to direct writes
            assert log.pending == 0
            log.close()
            on_topic = decisions_on_topic(broker)
        finally:
            broker.stop()

        assert sorted((d["reason"], d["target"]) for d in on_topic) == sorted(
            (f"round {i}", f"demo/{inst}") for i in range(4) for inst in ("s1", "s2"))
        rows = cl.execute(f"SELECT reason, target, after, prediction_refs FROM {scratch_db.database}.decisions FINAL"
                          " ORDER BY ts_ms, target")
        assert [(r[0], r[1]) for r in rows] == [(f"round {i}", f"demo/{inst}") for i in range(4)
                                                 for inst in ("s1", "s2")]
        # Each decision's refs resolve to the prediction behind it, with the version that made it.
        joined = cl.execute(
            f"SELECT d.target, d.after, p.value, p.model_version FROM {scratch_db.database}.decisions AS d FINAL "
            f"ARRAY JOIN d.prediction_refs AS ref "
            f"ANY INNER JOIN (SELECT concat(kind, ':', service, '/', instance, '@', model, ':', model_version, '#',"
            f" toString(ts_ms)) AS ref, value, model_version FROM {scratch_db.database}.predictions FINAL) AS p "
            f"USING ref ORDER BY d.ts_ms, d.target")
        assert len(joined) == 8 and all(after == value and version == "v7" for _, after, value, version in joined)
    finally:
        cl.disconnect()


def test_clickhouse_down_spools_only_the_rows_and_kafka_gets_each_decision_once(
        core_stack: Settings, scratch_db: ClickHouseSettings, tmp_path: Path) -> None:
    """Kafka up, ClickHouse away (its port closed): the decisions reach `fs.decisions` at once and once;
    the rows wait in the spool, ahead of later publishes, and reach ClickHouse when it answers."""
    topic = f"t{uuid.uuid4().hex[:8]}.decisions"
    ensure_topics(core_stack.kafka.model_copy(update={"topic_decisions": topic}))
    clickhouse = {"at": scratch_db.model_copy(update={"tcp_port": free_port()})}  # nothing listens there yet
    log = DecisionLog(topic, scratch_db.database, Spool(tmp_path / "spool", 4 * 1024 * 1024),
                      producer_factory=lambda: KafkaProducer(bootstrap_servers=core_stack.kafka.bootstrap_servers),
                      clickhouse_factory=lambda: clickhouse_client(clickhouse["at"]), retry_s=0.3)
    try:
        log.publish(*round_of(0))
        assert log.pending == 2  # the decisions' rows and the predictions' rows; the Kafka records went
        log.publish(*round_of(1))  # queued behind them, Kafka records included: order holds
        assert log.pending == 2 + 4
        clickhouse["at"] = scratch_db  # ClickHouse answers again
        assert log.wait_replayed(30)
    finally:
        log.close()
    on_topic = [(d["reason"], d["target"]) for d in decisions_on_topic_named(core_stack, topic)]
    assert sorted(on_topic) == sorted((f"round {i}", f"demo/{inst}") for i in range(2) for inst in ("s1", "s2"))
    cl = clickhouse_client(scratch_db)
    try:
        assert cl.execute(f"SELECT count() FROM {scratch_db.database}.decisions FINAL") == [(4,)]
        assert cl.execute(f"SELECT count() FROM {scratch_db.database}.predictions FINAL") == [(4,)]
    finally:
        cl.disconnect()
