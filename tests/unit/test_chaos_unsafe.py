"""The chaos suite's judgement of actuator actions (pure) and its list of faults, without a stack."""

from __future__ import annotations

from typing import Any

from infra.chaos import DEFAULT_FAULTS, FAULT_NEEDS, POOL_INSTANCE, chaos_pool_service, rising, unsafe
from infra.core.settings import Settings
from infra.stack.components import build_components
from infra.stack.launcher import with_needs


def d(action: str, ts: int, target: str = "web/a", service: str = "web", before: float | None = None,
      after: float | None = None, outcome: str = "applied") -> dict[str, Any]:
    return {"action": action, "ts": ts, "target": target, "service": service, "before": before, "after": after,
            "outcome": outcome}


def test_the_default_faults_are_the_issues_list() -> None:
    assert set(DEFAULT_FAULTS) == {"stream-worker", "clickhouse", "serving", "autoscaler", "registry-sync",
                                   POOL_INSTANCE, "etcd"}


def test_the_pool_instance_fault_starts_the_pool_haproxy_and_the_registry_sync() -> None:
    names = {c.name for c in with_needs(build_components(Settings()), FAULT_NEEDS[POOL_INSTANCE])}
    assert {"pool", "registry-sync", "haproxy", "etcd"} <= names
    assert chaos_pool_service(Settings()).name == "web"  # the quickest to start of the default services


def test_one_crashed_instance_replaced_is_safe() -> None:
    # what the pool and the registry sync publish for one crash: one target removed (by three actuators)
    decisions = [d("remove", 1_000), d("remove", 1_000), d("start", 1_001, "web/b"),
                 d("remove", 1_050), d("add_server", 1_600, "web/b")]
    assert unsafe(decisions) == 0


def test_drains_beyond_max_unavailable_count() -> None:
    # two instances out in one round
    assert unsafe([d("drain", 1_000, "web/a"), d("drain", 1_000, "web/b")]) == 1
    # a second drain while the first one still drains (later rounds)
    assert unsafe([d("drain", 1_000, "web/a"), d("drain", 5_000, "web/b")]) == 1
    # ... but not once the first one is gone, or readmitted
    assert unsafe([d("drain", 1_000, "web/a"), d("remove", 3_000, "web/a"), d("drain", 5_000, "web/b")]) == 0
    assert unsafe([d("drain", 1_000, "web/a"), d("undrain", 3_000, "web/a"), d("drain", 5_000, "web/b")]) == 0
    # another service's drain is not this one's
    assert unsafe([d("drain", 1_000, "web/a"), d("drain", 5_000, "shop/b", service="shop")]) == 0
    # the sync repeating the pool's drain of the same instance is one drain
    assert unsafe([d("drain", 1_000, "web/a"), d("drain", 1_200, "web/a")]) == 0


def test_refused_failed_and_dry_run_decisions_are_not_actions() -> None:
    both = [d("drain", 1_000, "web/a"), d("drain", 1_000, "web/b", outcome="skipped: guardrail")]
    assert unsafe(both) == 0
    assert unsafe([d("drain", 1_000, "web/a"), d("drain", 1_000, "web/b", outcome="failed: etcd away")]) == 0
    assert unsafe([d("set_weight", 1_000, "demo/s1", service="demo", before=100, after=0, outcome="dry_run")]) == 0
    assert unsafe([d("set_weight", 1_000, "demo/s1", service="demo", before=100, after=0)]) == 1


def test_a_scale_down_while_load_rises_counts() -> None:
    load = {"web": {0: 100, 10: 150, 20: 150}}  # windows of 10 s: rising into 10, flat into 20
    down_rising = d("scale", 12_000, "web", before=4, after=3)
    down_flat = d("scale", 25_000, "web", before=4, after=3)
    up_rising = d("scale", 12_000, "web", before=3, after=4)
    assert unsafe([down_rising], load, window_s=10) == 1
    assert unsafe([down_flat], load, window_s=10) == 0
    assert unsafe([up_rising], load, window_s=10) == 0
    assert unsafe([down_rising], {}, window_s=10) == 0  # no load known: cannot tell


def test_rising_needs_more_than_noise() -> None:
    assert rising({0: 100, 10: 111}, 10_500, 10)
    assert not rising({0: 100, 10: 105}, 10_500, 10)  # within 10%
    assert not rising({10: 500}, 10_500, 10)  # no window before
