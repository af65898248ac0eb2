"""A replacement asked for in the registry (the health controller's surge before a drain), against the real
instance pool: the marked instance keeps serving but leaves the count, the pool starts its replacement, and
withdrawing the mark puts it back in the count, so the pool scales the extra one away. Private rig: etcd and
the pool on free ports."""

from __future__ import annotations

import time
from pathlib import Path

from infra.benches.registry_rig import Rig, rig_settings
from infra.core.service_registry import Registry
from infra.core.settings import PoolServiceSettings
from lb_adapters.actuators.scalers.base import Replicas
from lb_adapters.actuators.scalers.pool import PoolScaler
from tests.integration.waiting import wait_for

SERVICE = "web"


def test_a_marked_instance_is_replaced_while_it_serves_and_counts_again_once_unmarked(tmp_path: Path) -> None:
    service = PoolServiceSettings(name=SERVICE, replicas=2, startup_delay_s=1.0, capacity_rps=10, workers=2,
                                  min_replicas=1, max_replicas=4)
    rig = Rig(rig_settings(tmp_path / "rig", service))
    registry = Registry(rig.s.registry_endpoint, rig.s.registry.prefix, rig.s.registry.timeout_s)
    try:
        rig.start("etcd", "pool")
        scaler = PoolScaler(f"http://127.0.0.1:{rig.s.pool.admin_port}", SERVICE)
        wait_for("two ready instances", lambda: scaler.current() == Replicas(2, 2))
        [entry, *_] = sorted(registry.list(SERVICE), key=lambda e: e.instance)
        marked = entry.instance
        assert registry.request_replacement(SERVICE, marked, "controller", entry.mod_revision)

        wait_for("the replacement started and ready, the marked one out of the count",
                 lambda: scaler.current() == Replicas(2, 2) and len(registry.list(SERVICE)) == 3, 30)
        after = {e.instance: e.record for e in registry.list(SERVICE)}
        record = after[marked]
        assert record is not None and record.state == "ready"  # still serving
        assert record.replacement_requested
        assert {i["instance"] for i in rig.pool_status()["instances"]} == set(after)  # type: ignore[attr-defined]

        now = registry.get(SERVICE, marked)
        assert now is not None
        assert registry.request_replacement(SERVICE, marked, None, now.mod_revision)  # withdrawn
        wait_for("back to two: the extra one drained and stopped", lambda: len(registry.list(SERVICE)) == 2
                 and scaler.current() == Replicas(2, 2), 30)
    finally:
        registry.close()
        rig.close()


def test_an_instance_drained_by_the_controller_and_not_readmitted_is_retired(tmp_path: Path) -> None:
    service = PoolServiceSettings(name=SERVICE, replicas=2, startup_delay_s=0.5, capacity_rps=10, workers=2,
                                  min_replicas=1, max_replicas=4)
    s = rig_settings(tmp_path / "rig", service)
    s = s.model_copy(update={"pool": s.pool.model_copy(update={"retire_drained_after_s": 3.0})})
    rig = Rig(s)
    registry = Registry(rig.s.registry_endpoint, rig.s.registry.prefix, rig.s.registry.timeout_s)
    try:
        rig.start("etcd", "pool")
        scaler = PoolScaler(f"http://127.0.0.1:{rig.s.pool.admin_port}", SERVICE)
        wait_for("two ready instances", lambda: scaler.current() == Replicas(2, 2))
        first, second = sorted(registry.list(SERVICE), key=lambda e: e.instance)
        assert registry.set_state(SERVICE, first.instance, "draining", first.mod_revision, set_by="controller")
        assert registry.set_state(SERVICE, second.instance, "draining", second.mod_revision, set_by="operator")
        wait_for("both replaced", lambda: scaler.current() == Replicas(2, 2) and len(registry.list(SERVICE)) == 4, 30)
        wait_for("the controller's drain retired", lambda: first.instance not in
                 {e.instance for e in registry.list(SERVICE)}, 30)
        time.sleep(1.0)  # a few more reconcile rounds: the operator's drain stays
        names = {e.instance for e in registry.list(SERVICE)}
        assert second.instance in names and len(names) == 3
        assert first.instance not in {i["instance"] for i in rig.pool_status()["instances"]}  # type: ignore[attr-defined]
    finally:
        registry.close()
        rig.close()
