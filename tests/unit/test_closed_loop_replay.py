"""The demo's like-for-like replay of a policy's decided counts: startup delay, removals, under-provisioning."""

from infra.closed_loop import replay_schedule
from infra.core.features_table import ServiceWindow


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
