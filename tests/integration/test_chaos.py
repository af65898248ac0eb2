"""The chaos suite, CI-sized: the stream worker, ClickHouse and one pool instance crashed in turn under a
bounded replay, on a private stack of the pipeline's components, the pool, HAProxy and the registry sync
(free ports, temp folder; the shared stack is never touched). Its instance windows are 2 s, not 10: each
fault's replay is judged as soon as its last window closes, which saves about a minute of CI."""

from __future__ import annotations

from infra.chaos import POOL_INSTANCE, run_chaos
from infra.core.settings import load_settings


def test_crashing_the_stream_worker_clickhouse_and_a_pool_instance_loses_and_doubles_nothing() -> None:
    said: list[str] = []
    faults = ["stream-worker", "clickhouse", POOL_INSTANCE]
    results = run_chaos(load_settings(), faults, rate=20, down_s=3, after_s=6, settle_s=90,
                        say=said.append, with_controllers=False,
                        stack_overrides={"streams": {"instance_window_s": 2}})
    assert [r.component for r in results] == faults
    for r in results:
        assert r.sent > 100, r  # the replay ran through the fault
        assert r.recovered, (r, said)
        assert (r.lost, r.double_counted_windows, r.unsafe_actions) == (0, 0, 0), (r, said)
        assert 0 < r.recover_s < 60 and r.flowing_s is not None and r.flowing_s >= r.recover_s, r
    pool = results[-1]
    # the pool's own decisions about the crash (remove, start) and the sync's (remove, add_server) were read
    assert pool.decisions >= 2, (pool, said)
    assert pool.balancer_sent is not None and pool.balancer_sent > 0, pool
    assert any("crashed web/" in line for line in said), said
