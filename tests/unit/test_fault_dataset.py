"""The fault recorder's private settings: one pool service per seed with its scenario, short instance windows,
every port moved off the shared stack's."""

from __future__ import annotations

from pathlib import Path

from infra.core.settings import Settings, load_settings
from infra.fault_dataset import RecordPlan, batch_settings, service_name, split_of
from infra.pool.faults import load_scenario


def test_a_batch_runs_one_service_per_seed_on_private_ports(tmp_path: Path) -> None:
    from infra.chaos import private_config

    plan = RecordPlan(seeds=[3, 1004], duration_s=120, capacity_rps=10)
    config = private_config(tmp_path, batch_settings(plan, plan.seeds, tmp_path))
    s = load_settings(config, state_dir=tmp_path)
    assert [svc.name for svc in s.pool.services] == ["health-s3", "health-s1004"]
    svc = s.pool.service("health-s3")
    assert svc is not None and svc.replicas == 4 and svc.capacity_rps == 10 and svc.scenario is not None
    scenario = load_scenario(svc.scenario)
    assert scenario.seed == 3 and len(scenario.faults) == 1
    assert s.streams.instance_window == 2 and s.streams.window_s == Settings().streams.window_s
    shared = Settings()
    assert svc.haproxy_port != shared.pool.services[0].haproxy_port
    assert s.clickhouse.tcp_port != shared.clickhouse.tcp_port
    assert s.haproxy.frontend_port != shared.haproxy.frontend_port


def test_seeds_split_at_the_configured_held_out_start() -> None:
    assert [split_of(x, 1000) for x in (1, 999, 1000, 1234)] == ["train", "train", "heldout", "heldout"]
    assert service_name(17) == "health-s17"
    assert RecordPlan(seeds=list(range(10)), batch=4).batches() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
