"""A replacement asked for in the registry (the health controller's surge before a drain), against the real
instance pool: the marked instance keeps serving but leaves the count, the pool starts its replacement, and
withdrawing the mark puts it back in the count, so the pool scales the extra one away. Private rig: etcd and
the pool on free ports."""

from __future__ import annotations

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
