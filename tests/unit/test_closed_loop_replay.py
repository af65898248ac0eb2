"""The demo's like-for-like replay of a policy's decided counts: startup delay, removals, under-provisioning."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.core.features_table import ServiceWindow
from infra.core.scaling import replay_schedule
from infra.core.settings import load_settings


def windows(rates: list[float], width: int = 10, start: int = 1000) -> list[ServiceWindow]:
    return [ServiceWindow(start + i * width, start + (i + 1) * width, int(r * width), r) for i, r in enumerate(rates)]


def test_an_added_replica_costs_from_its_decision_and_serves_after_startup() -> None:
    w = windows([15.0, 25.0, 25.0])  # capacity 10: 2 replicas cover 15, 3 are needed from t=1010
    # scale 2 -> 3 at t=1000 with a 15 s startup: ready at 1015, so 1010..1014 are under-provisioned
    rs, under = replay_schedule([(1000.0, 3)], 2, 15.0, w, 10.0, 1000.0, 1030.0)
    assert rs == 3 * 30
    assert under == 5
    # the same decision 10 s late: 1010..1024 short
    rs, under = replay_schedule([(1010.0, 3)], 2, 15.0, w, 10.0, 1000.0, 1030.0)
    assert (rs, under) == (2 * 10 + 3 * 20, 15)


def test_a_removal_takes_a_starting_replica_first() -> None:
    w = windows([15.0, 15.0])
    # 2 ready; up to 3 at 1000 (ready 1030), back to 2 at 1005: the starting one goes, both ready ones stay
    rs, under = replay_schedule([(1000.0, 3), (1005.0, 2)], 2, 30.0, w, 10.0, 1000.0, 1020.0)
    assert (rs, under) == (3 * 5 + 2 * 15, 0)
    # down to 1 at 1010: 15 req/s on one ready replica is short for the last 10 s
    rs, under = replay_schedule([(1010.0, 1)], 2, 30.0, w, 10.0, 1000.0, 1020.0)
    assert (rs, under) == (2 * 10 + 1 * 10, 10)


def test_no_decisions_keeps_the_initial_count_and_seconds_without_a_window_are_not_judged() -> None:
    rs, under = replay_schedule([], 4, 20.0, windows([50.0]), 10.0, 1000.0, 1020.0)  # 1010..1019: no window
    assert (rs, under) == (80, 10)


def plain_replay(decided: list[tuple[float, int]], initial: int, startup_s: float, ws: list[ServiceWindow],
                 capacity: float, start: float, end: float) -> tuple[float, float]:
    """The schedule replayed the obvious way: every window asked about every second."""
    ready_at, replica_s, under_s, t = [-math.inf] * initial, 0.0, 0.0, start
    pending = sorted(decided)
    while t < end:
        while pending and pending[0][0] <= t:
            _, want = pending.pop(0)
            ready_at = ready_at + [t + startup_s] * (want - len(ready_at)) if want > len(ready_at) \
                else sorted(ready_at)[:want]
        replica_s += len(ready_at)
        rate = next((w.rate for w in ws if w.start_s <= t < w.end_s), None)
        under_s += rate is not None and rate > capacity * sum(1 for r in ready_at if r <= t)
        t += 1.0
    return replica_s, under_s


spans = st.tuples(st.floats(990, 1060, allow_nan=False), st.floats(0, 25, allow_nan=False), st.floats(0, 40))


@given(st.lists(spans, max_size=12), st.lists(st.tuples(st.floats(990, 1060), st.integers(0, 5)), max_size=6),
       st.floats(990, 1010), st.integers(0, 4), st.floats(0, 20))
@settings(database=None, max_examples=200, deadline=None)
def test_the_schedule_replay_equals_the_obvious_one_with_overlapping_gapped_windows(
        raw: list[tuple[float, float, float]], decided: list[tuple[float, int]], start: float, initial: int,
        startup_s: float) -> None:
    """Each second's rate comes from the first window (in the given order) that holds it, as before
    `replay_schedule` looked windows up per second: windows here overlap, leave gaps, start off the second."""
    ws = [ServiceWindow(a, a + width, int(rate * width), rate) for a, width, rate in raw]  # type: ignore[arg-type]
    assert replay_schedule(decided, initial, startup_s, ws, 10.0, start, start + 60.5) == \
        plain_replay(decided, initial, startup_s, ws, 10.0, start, start + 60.5)


def test_history_rows_are_one_closed_window_per_trace_minute_ending_at_the_replay() -> None:
    from infra.closed_loop import history_rows

    rates = np.array([1.0, math.nan, 2.0])  # req/s of three trace minutes; the middle one missing
    rows = history_rows(rates, 1.5, 1, 5000, "shop")
    assert [(r[0].timestamp(), r[1].timestamp()) for r in rows] == [(4997, 4998), (4999, 5000)]
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [("shop", "*", 90, 90.0), ("shop", "*", 180, 180.0)]


def test_a_trace_minute_must_be_whole_wall_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.closed_loop import history_window_s

    monkeypatch.chdir(tmp_path)
    s = load_settings()
    for speedup, seconds in ((60.0, 1), (6.0, 10), (12.0, 5), (1.0, 60), (7.0, None), (120.0, None)):
        t = s.model_copy(update={"demo": s.demo.model_copy(update={"speedup": speedup})})
        if seconds is None:
            with pytest.raises(ValueError, match="divides 60"):
                history_window_s(t)
        else:
            assert history_window_s(t) == seconds
