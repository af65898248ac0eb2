"""A pool whose service plays a fault scenario: the faulty instance answers 500s, its healthy peer
does not, and the ground truth of the fault is in ClickHouse `fault_events` on the wall clock.
Real etcd and pool processes on a private rig; the stack's ClickHouse with a scratch database."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from infra.benches.registry_rig import Rig, rig_settings
from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.settings import PoolServiceSettings, Settings
from infra.pool.faults import Fault, Scenario, dump_scenario
from tests.integration.waiting import wait_for


def test_the_scenario_s_instance_fails_its_peer_serves_and_the_truth_is_recorded(stack: Settings,
                                                                                 tmp_path: Path) -> None:
    scenario = Scenario(name="errors-on-first", faults=[Fault(instance="#0", kind="errors", start_s=0,
                                                              error_fraction=1.0)])
    path = tmp_path / "scenario.yml"
    path.write_text(dump_scenario(scenario))
    service = PoolServiceSettings(name="web", replicas=2, startup_delay_s=0.2, capacity_rps=200, workers=4,
                                  max_replicas=4, scenario=path)
    db = f"faults_{uuid.uuid4().hex[:8]}"
    ch = stack.clickhouse.model_copy(update={"database": db})
    migrate(ch)
    rig = Rig(rig_settings(tmp_path / "rig", service))
    rig.env["FORESIGHT_CLICKHOUSE"] = json.dumps(ch.model_dump(mode="json"))
    cl = clickhouse_client(ch, db)
    try:
        rig.start("etcd", "pool")
        wait_for("two ready instances", lambda: rig.pool_status()["ready"] == 2)
        listed = rig.pool_status()["instances"]
        assert isinstance(listed, list)
        instances = {i["instance"]: i["port"] for i in listed}
        wait_for("the ground truth row", lambda: cl.execute(f"SELECT count() FROM {db}.fault_events")[0][0] >= 1)
        rows = cl.execute(f"SELECT instance, kind, start_ms, failure_ms, scenario FROM {db}.fault_events FINAL")
        assert len(rows) == 1
        faulty, kind, start_ms, failure_ms, name = rows[0]
        assert (kind, name) == ("errors", "errors-on-first") and faulty in instances
        assert failure_ms == start_ms and abs(start_ms / 1000 - time.time()) < 600
        statuses: dict[str, list[int]] = {}
        for instance, port in instances.items():
            statuses[instance] = [httpx.get(f"http://127.0.0.1:{port}/x", timeout=10).status_code for _ in range(30)]
        assert statuses.pop(faulty) == [500] * 30
        assert list(statuses.values()) == [[200] * 30]
    finally:
        rig.close()
        cl.execute(f"DROP DATABASE IF EXISTS {db}")
        cl.disconnect()
