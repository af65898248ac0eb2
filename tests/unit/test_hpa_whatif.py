"""The demo's offline HPA what-if: the reactive policy on recorded windows, as the live loop runs it."""

from infra.core.features_table import ServiceWindow
from infra.core.scaling import reactive_knobs, replay_schedule
from infra.hpa_whatif import cheapest_at_least_as_safe, simulate_reactive
from infra.trace_time import TraceTime

TT = TraceTime(wall0=1000.0, trace0=807_782_400.0, speedup=60.0, scale=1.0)


def windows(rates: list[float], width: int = 10, start: int = 1000) -> list[ServiceWindow]:
    return [ServiceWindow(start + i * width, start + (i + 1) * width, int(r * width), r) for i, r in enumerate(rates)]


def run(target: float, w: list[ServiceWindow], rounds: list[float], lag: float = 3.0) -> list[tuple[float, int]]:
    knobs = reactive_knobs(target_utilization=target, min_replicas=1, max_replicas=20, feedback_gain=0.0)
    return simulate_reactive(rounds, w, TT, knobs, capacity_rps=10.0, startup_s=20.0, interval_s=5.0, initial=2,
                             landed_after_s=lag)


def test_it_scales_on_the_windows_that_had_landed_and_a_lower_target_asks_for_more() -> None:
    w = windows([15.0] * 3 + [40.0] * 6)  # the load rises at 1030, that window lands at 1043
    rounds = [1000.0 + 5 * k for k in range(18)]
    at_08 = run(0.8, w, rounds)
    assert [n for t, n in at_08 if t < 1043] == [2] * len([t for t in rounds if t < 1043])  # nothing seen yet
    assert at_08[-1][1] == 5  # 40 req/s / (10 x 0.8) -> 5
    assert run(0.5, w, rounds)[-1][1] == 8  # 40 / 5 -> 8
    # nothing lands later than it may: with a longer lag the same rise is seen later
    first_up = min(t for t, n in at_08 if n > 2)
    assert min(t for t, n in run(0.8, w, rounds, lag=8.0) if n > 2) > first_up


def test_the_what_if_goes_through_the_same_replay_and_the_cheapest_safe_target_is_chosen() -> None:
    w = windows([15.0] * 3 + [40.0] * 9)
    rounds = [1000.0 + 5 * k for k in range(24)]
    sweep = {t: replay_schedule(run(t, w, rounds), 2, 20.0, w, 10.0, 1000.0, 1120.0) for t in (0.8, 0.5)}
    (rs8, under8), (rs5, under5) = sweep[0.8], sweep[0.5]
    assert rs5 > rs8 and under5 <= under8
    assert cheapest_at_least_as_safe(sweep, under8) == 0.8
    assert cheapest_at_least_as_safe(sweep, under8 - 1) == (0.5 if under5 <= under8 - 1 else None)
    assert cheapest_at_least_as_safe({0.8: (100.0, 9.0), 0.6: (130.0, 2.0), 0.5: (150.0, 2.0)}, 3.0) == 0.6
    assert cheapest_at_least_as_safe({0.8: (100.0, 9.0)}, 3.0) is None
