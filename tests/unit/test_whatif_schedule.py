"""What-if replay's pure parts: the demand grid and the recorded replica schedule."""

import numpy as np

from infra.core.decisions_table import ScaleDecision
from training.whatif import demand_grid, recorded_schedule

T0 = 1_800_000_000 - 1_800_000_000 % 60


def dec(at_s: float, before: float | None, after: float) -> ScaleDecision:
    return ScaleDecision(ts_ms=int((T0 + at_s) * 1000), before=before, after=after, reason="", outcome="applied")


def test_demand_grid_places_minutes_and_leaves_holes_missing() -> None:
    grid = demand_grid([(T0, 600), (T0 + 120, 1200), (T0 + 600, 60)], T0, 4)
    assert grid[0] == 10.0 and np.isnan(grid[1]) and grid[2] == 20.0 and np.isnan(grid[3])


def test_schedule_takes_the_count_set_before_each_minutes_middle() -> None:
    sched = recorded_schedule([dec(-300, 1, 4), dec(75, 4, 6), dec(100, 6, 7)], T0, 4)
    # minute 0: 4 (set before the range); minute 1 (middle at 90 s): 6; minute 2: 7
    assert sched.tolist() == [4, 6, 7, 7]


def test_schedule_before_the_first_decision_is_what_that_decision_found() -> None:
    assert recorded_schedule([dec(150, 3, 5)], T0, 4).tolist() == [3, 3, 5, 5]
    assert recorded_schedule([dec(150, None, 5)], T0, 4).tolist() == [-1, -1, 5, 5]
    assert recorded_schedule([], T0, 2).tolist() == [-1, -1]
