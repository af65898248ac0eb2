"""The health controller on the real path: feature windows in ClickHouse -> the stack's serving
(/v1/risk, the peer-deviation baseline) -> drain policy -> the stack's etcd (compare-and-set) -> the
durable decision log (ClickHouse decisions + predictions). The outlier is drained, the healthy ones
are not, and it is re-admitted only after consecutive healthy rounds."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.kafka_admin import ensure_topics
from infra.core.service_registry import InstanceLease, InstanceRecord, Registry
from infra.core.settings import Settings
from infra.workers import decision_log
from lb_adapters.decision_log import DecisionLog
from lb_adapters.features import LatestFeatures
from lb_adapters.health import HealthController, RegistryHolds
from lb_adapters.policies.drain import DrainKnobs
from lb_adapters.predictions import RiskClient

SERVICE = "web"
INSTANCES = ("a", "b", "c", "d")


def _window(cl: Client, db: str, instance: str, p99: float, errors: int, age_s: int = 5) -> None:
    start = int(time.time()) - age_s - 10
    cl.execute(f"INSERT INTO {db}.features (window_start, window_end, service, instance, requests, rate, status_2xx, "
               "status_5xx, latency_p50_ms, latency_p90_ms, latency_p99_ms, emitted_at) VALUES",
               [(start, start + 10, SERVICE, instance, 100, 10.0, 100 - errors, errors, p99 / 4, p99 / 2, p99,
                 time.time_ns())])


@pytest.fixture
def rig(stack: Settings) -> Iterator[tuple[Settings, Client, Registry]]:
    db = f"health_{uuid.uuid4().hex[:8]}"
    s = stack.model_copy(update={
        "clickhouse": stack.clickhouse.model_copy(update={"database": db}),
        "kafka": stack.kafka.model_copy(update={"topic_decisions": f"fs.test-health-{db}.decisions"}),
        "state_dir": stack.state / "test-health" / db,
    })
    migrate(s.clickhouse)
    ensure_topics(s.kafka)
    registry = Registry(s.registry_endpoint, f"/test-health-{secrets.token_hex(4)}", s.registry.timeout_s)
    leases: list[InstanceLease] = []
    for port, name in enumerate(INSTANCES, start=20001):
        leases.append(registry.register(SERVICE, name, InstanceRecord(address="127.0.0.1", port=port,
                                                                      started_at=int(time.time() * 1000)), 30))
    cl = clickhouse_client(s.clickhouse, db)
    try:
        yield s, cl, registry
    finally:
        for lease in leases:
            lease.revoke()
        registry.close()
        cl.execute(f"DROP DATABASE IF EXISTS {db}")
        cl.disconnect()


def test_the_outlier_is_drained_before_it_fails_and_readmitted_after_healthy_rounds(
        rig: tuple[Settings, Client, Registry]) -> None:
    s, cl, registry = rig
    db = s.clickhouse.database
    for name in INSTANCES:
        _window(cl, db, name, p99=400.0 if name == "d" else 20.0 + INSTANCES.index(name), errors=3 if name == "d"
                else 0)
    sink = decision_log(s, "test-health")
    controller = HealthController(LatestFeatures(clickhouse_client(s.clickhouse), db),
                                  RiskClient(s.serving_url, s.serving_token),
                                  registry, sink, DrainKnobs(readmit_after=2), features_max_age_s=60)
    report = controller.step(SERVICE)
    assert report.model == "peer-deviation@baseline"
    assert report.risk["d"] is not None and report.risk["d"] >= 0.8
    assert [(d.target, d.action, d.outcome) for d in report.decisions] == [("web/d", "drain", "applied")]
    states = {e.instance: e.record.state for e in registry.list(SERVICE) if e.record}
    assert states == {"a": "ready", "b": "ready", "c": "ready", "d": "draining"}
    assert registry.get(SERVICE, "d").record.metadata["set_by"] == "controller"  # type: ignore[union-attr]

    # recorded: the decision in ClickHouse with refs that resolve to the risk it acted on
    assert sink.wait_replayed(timeout=20)
    rows = cl.execute(f"SELECT action, target, outcome, prediction_refs FROM {db}.decisions FINAL")
    assert [(a, t, o) for a, t, o, _ in rows] == [("drain", "web/d", "applied")]
    refs = rows[0][3]
    scored = cl.execute(f"SELECT instance, value FROM {db}.predictions FINAL WHERE kind = 'risk'")
    assert len(refs) == 1 and [i for i, _ in scored] == ["d"] and scored[0][1] >= 0.8

    # still bad: held; then healthy for two rounds: re-admitted on the second
    assert controller.step(SERVICE).decisions == []
    _window(cl, db, "d", p99=21.0, errors=0, age_s=0)
    assert controller.step(SERVICE).decisions == []
    readmit = controller.step(SERVICE).decisions
    assert [(d.target, d.action, d.outcome) for d in readmit] == [("web/d", "undrain", "applied")]
    assert registry.get(SERVICE, "d").record.state == "ready"  # type: ignore[union-attr]
    sink.close()


def test_an_operator_drain_is_left_alone_and_serving_down_holds(rig: tuple[Settings, Client, Registry]) -> None:
    s, cl, registry = rig
    db = s.clickhouse.database
    for name in INSTANCES:
        _window(cl, db, name, p99=20.0 + INSTANCES.index(name), errors=0)
    entry = registry.get(SERVICE, "b")
    assert entry is not None and registry.set_state(SERVICE, "b", "draining", entry.mod_revision, set_by="operator")
    sink = decision_log(s, "test-health-2")
    controller = HealthController(LatestFeatures(clickhouse_client(s.clickhouse), db),
                                  RiskClient(s.serving_url, s.serving_token),
                                  registry, sink, DrainKnobs(readmit_after=1), features_max_age_s=60)
    for _ in range(3):
        assert controller.step(SERVICE).decisions == []
    assert registry.get(SERVICE, "b").record.state == "draining"  # type: ignore[union-attr]

    away = HealthController(LatestFeatures(clickhouse_client(s.clickhouse), db), RiskClient("http://127.0.0.1:9"),
                            registry, sink, DrainKnobs(), features_max_age_s=60)
    _window(cl, db, "a", p99=900.0, errors=50, age_s=0)
    report = away.step(SERVICE)
    assert report.decisions == [] and "risk unavailable" in report.note
    sink.close()


def _outlier_without_spare(s: Settings, cl: Client, registry: Registry,
                           log: str) -> tuple[HealthController, DecisionLog]:
    """Three instances at 10 req/s each, the outlier d among them, and a controller that takes each to carry
    12 req/s: a and b alone (24) cannot carry the 30 req/s x 1.15; with a third they can (36)."""
    db = s.clickhouse.database
    registry.deregister(SERVICE, "c")
    for name in ("a", "b", "d"):
        _window(cl, db, name, p99=400.0 if name == "d" else 20.0 + INSTANCES.index(name), errors=3 if name == "d"
                else 0)
    sink = decision_log(s, log)
    controller = HealthController(LatestFeatures(clickhouse_client(s.clickhouse), db),
                                  RiskClient(s.serving_url, s.serving_token), registry, sink,
                                  DrainKnobs(readmit_after=1, capacity_rps=12.0), features_max_age_s=60)
    return controller, sink


def test_a_drain_refused_for_capacity_asks_for_a_replacement_then_drains_once_it_is_ready(
        rig: tuple[Settings, Client, Registry]) -> None:
    """Surge, then drain: with no spare capacity the outlier is not drained but marked for replacement (the
    pool starts one and stops counting it); once the replacement is registered the drain goes through; the
    mark goes when the instance is re-admitted."""
    s, cl, registry = rig
    db = s.clickhouse.database
    controller, sink = _outlier_without_spare(s, cl, registry, "test-health-surge")
    report = controller.step(SERVICE)
    assert [(d.target, d.action, d.outcome) for d in report.decisions] == [
        ("web/d", "drain", "skipped: guardrail"), ("web/d", "replace", "applied"), ("web/d", "hold", "applied")]
    assert "would be overloaded" in report.decisions[0].reason
    d = registry.get(SERVICE, "d")
    assert d is not None and d.record is not None
    assert d.record.state == "ready" and d.record.replacement_requested  # still serving, out of the count
    # the share a and b cannot take (30 - 24 / 1.15 of 30 req/s), for the weight adapter to cap d's weight to
    assert d.record.hold_share == report.decisions[2].after == 0.35
    assert RegistryHolds(registry).hold_shares(SERVICE) == {"d": 0.35}
    assert controller.step(SERVICE).decisions[1:] == []  # asked once, written once: not every round

    lease = registry.register(SERVICE, "e", InstanceRecord(address="127.0.0.1", port=20009,
                                                           started_at=int(time.time() * 1000)), 30)
    try:  # no window of its own yet: it adds capacity, not load
        drained = controller.step(SERVICE).decisions
        assert [(x.target, x.action, x.outcome) for x in drained] == [("web/d", "drain", "applied")], drained
        _window(cl, db, "d", p99=21.0, errors=0, age_s=0)
        readmit = controller.step(SERVICE).decisions
        assert [(x.target, x.action, x.outcome) for x in readmit] == [("web/d", "undrain", "applied")]
        d = registry.get(SERVICE, "d")
        assert d is not None and d.record is not None
        assert d.record.state == "ready" and not d.record.replacement_requested  # it counts again
        assert d.record.hold_share is None and RegistryHolds(registry).hold_shares(SERVICE) == {}
    finally:
        lease.revoke()
        sink.close()


def test_a_replacement_asked_for_is_withdrawn_when_the_instance_recovers_first(
        rig: tuple[Settings, Client, Registry]) -> None:
    s, cl, registry = rig
    db = s.clickhouse.database
    controller, sink = _outlier_without_spare(s, cl, registry, "test-health-withdraw")
    assert [x.action for x in controller.step(SERVICE).decisions] == ["drain", "replace", "hold"]
    _window(cl, db, "d", p99=21.0, errors=0, age_s=0)
    kept = controller.step(SERVICE).decisions
    assert [(x.target, x.action, x.outcome) for x in kept if x.action != "drain"] == [
        ("web/d", "keep", "applied"), ("web/d", "hold", "applied")]  # the mark withdrawn, the hold lifted
    d = registry.get(SERVICE, "d")
    assert d is not None and d.record is not None and not d.record.replacement_requested
    assert d.record.hold_share is None
    sink.close()
