"""The backtest's per-day / per-week rows: consecutive stretches from the test start, each policy's
realised SLO and replica-seconds over exactly its minutes."""

import numpy as np

from infra.core.scaling import reactive, reactive_knobs, static
from training.autoscale import ScalingSpec, Trace, oracle, simulate
from training.backtest import _period_rows, _periods, _spread
from training.series import RateSeries


def series(minutes: int) -> RateSeries:
    return RateSeries(values=np.ones(minutes), start_unix_s=1_700_000_000.0,
                      second_index=np.arange(minutes) * 60, n_seconds=minutes * 60)


def test_periods_are_consecutive_stretches_from_the_range_start() -> None:
    periods = _periods(series(5000), 100, 100 + 3 * 1440 + 100, 1)
    assert [(a, b) for _, a, b in periods] == [(0, 1440), (1440, 2880), (2880, 4320), (4320, 4420)]
    assert periods[0][0] == "2023-11-14 23:53"  # UTC start of minute 100 (the series starts 22:13:20)
    assert [(a, b) for _, a, b in _periods(series(5000), 0, 5000, 7)] == [(0, 5000)]


def test_period_rows_count_each_policys_minutes() -> None:
    rng = np.random.default_rng(2)
    demand = rng.gamma(4.0, 25.0, size=2 * 1440)
    demand[100:160] = np.nan
    spec = ScalingSpec(capacity=20, startup_s=120)
    traces = {"predictive": Trace(), "hpa": Trace(), "oracle": Trace()}
    total = simulate(demand, static(6), reactive_knobs(), spec, trace=traces["predictive"])
    simulate(demand, reactive, reactive_knobs(0.6), spec, trace=traces["hpa"])
    oracle(demand, spec, traces["oracle"])
    rows = _period_rows(traces, demand, _periods(series(2 * 1440), 0, 2 * 1440, 1))
    assert [r["minutes"] for r in rows] == [1380, 1440]
    assert sum(r["predictive"]["replica_seconds"] for r in rows) == total.replica_seconds
    under = sum(r["predictive"]["underprov_pct"] * r["minutes"] for r in rows) / 2820
    assert abs(under - total.underprov_pct) < 1e-3
    assert rows[1]["predictive_vs_oracle"] == round(rows[1]["predictive"]["replica_seconds"]
                                                    / rows[1]["oracle"]["replica_seconds"], 3)
    spread = _spread(rows, "predictive_vs_hpa")
    assert spread is not None and spread["min"] <= spread["median"] <= spread["max"]
