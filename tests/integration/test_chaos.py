"""The chaos suite, CI-sized: the stream worker and ClickHouse crashed in turn under a bounded replay, on a
private stack of the pipeline's components (free ports, temp folder; the shared stack is never touched)."""

from __future__ import annotations

from infra.chaos import run_chaos
from infra.core.settings import load_settings


def test_crashing_the_stream_worker_and_clickhouse_loses_and_doubles_nothing() -> None:
    said: list[str] = []
    results = run_chaos(load_settings(), ["stream-worker", "clickhouse"], rate=20, down_s=3, after_s=6, settle_s=90,
                        say=said.append, with_controllers=False)
    assert [r.component for r in results] == ["stream-worker", "clickhouse"]
    for r in results:
        assert r.sent > 100, r  # the replay ran through the fault
        assert (r.lost, r.double_counted_windows, r.unsafe_actions) == (0, 0, 0), (r, said)
        assert 0 < r.recover_s < 60 and r.flowing_s is not None and r.flowing_s >= r.recover_s, r
    assert any("crashed" in line for line in said)
