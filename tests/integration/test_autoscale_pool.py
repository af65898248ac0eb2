"""The pool scaler and the autoscaler loop against the real instance pool (`foresight pool` and etcd on a
private rig, real backend processes that register once started), load read from the stack's
ClickHouse (a scratch database; the test writes the closed windows, as the stream worker would)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.benches.registry_rig import Rig, rig_settings
from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.settings import (
    AutoscaledService,
    AutoscalerSettings,
    PoolScalerSettings,
    PoolServiceSettings,
    Settings,
)
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas
from lb_adapters.actuators.scalers.pool import PoolScaler
from lb_adapters.autoscaler import Autoscaler, ScaledService
from lb_adapters.predictions import ForecastClient
from lb_adapters.rates import ClickHouseRates
from tests.integration.waiting import Recorder, wait_for

SERVICE = "web"
STARTUP_S = 2.0


def test_pool_scaler_and_loop_scale_real_pool_instances(core_stack: Settings, tmp_path: Path) -> None:
    service = PoolServiceSettings(name=SERVICE, replicas=1, startup_delay_s=STARTUP_S, capacity_rps=10, workers=2,
                                  min_replicas=1, max_replicas=4)
    rig = Rig(rig_settings(tmp_path / "rig", service))
    ch = core_stack.clickhouse.model_copy(update={"database": f"as_pool_{uuid.uuid4().hex[:8]}"})
    migrate(ch)
    cl = clickhouse_client(ch, ch.database)
    try:
        rig.start("etcd", "pool")
        scaler = PoolScaler(f"http://127.0.0.1:{rig.s.pool.admin_port}", SERVICE)
        wait_for("one ready instance", lambda: scaler.current() == Replicas(1, 1))
        scaler.scale(2)
        # started by the pool's next reconcile round (asynchronous: not yet counted when the PUT answers),
        # ready after its startup
        wait_for("the second instance started", lambda: scaler.current().current == 2, 10)
        wait_for("two ready instances", lambda: scaler.current() == Replicas(2, 2))
        with pytest.raises(ActuatorError, match="answered 422"):
            scaler.scale(99)  # beyond the pool's max_replicas: refused, said
        with pytest.raises(ActuatorError, match="answered 404"):
            PoolScaler(f"http://127.0.0.1:{rig.s.pool.admin_port}", "nope").current()

        # The loop, reactive (no serving needed): 35 req/s over 10 req/s per instance at target 0.8 -> 4 (max)
        now = int(time.time()) // 10 * 10
        rows = [(datetime.fromtimestamp(e - 10, UTC), datetime.fromtimestamp(e, UTC), SERVICE, "*", 10 * r, float(r))
                for e, r in ((now - 10, 30), (now, 35))]
        cl.execute(f"INSERT INTO {ch.database}.features (window_start, window_end, service, instance, requests, "
                   "rate) VALUES", rows)
        config = AutoscaledService(name=SERVICE, scaler=PoolScalerSettings(url=str(scaler.http.base_url)),
                                   policy="reactive", capacity_rps=10, startup_s=STARTUP_S,
                                   knobs={"min_replicas": 1, "max_replicas": 4})
        sink = Recorder()
        auto = Autoscaler([ScaledService(config, scaler)], ClickHouseRates(cl, ch.database),
                          ForecastClient("http://127.0.0.1:9"), sink, AutoscalerSettings())
        report = auto.step(SERVICE)
        assert report.decision is not None and report.decision.outcome == "applied", report.decision
        assert (report.decision.before, report.decision.after) == (2, 4)
        wait_for("four ready instances", lambda: scaler.current() == Replicas(4, 4))
        assert sink.decisions == [report.decision]
    finally:
        rig.close()
        cl.execute(f"DROP DATABASE IF EXISTS {ch.database}")
        cl.disconnect()
