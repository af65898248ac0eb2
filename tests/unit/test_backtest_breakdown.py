"""The evidence behind a replica-seconds target: how low any forecast-driven policy could go, and where
predictive's replica-seconds above the oracle's go."""

import numpy as np
import pytest
from scipy.stats import poisson

from infra.core.scaling import ScalingKnobs, predictive, predictive_knobs
from training.autoscale import Forecasts, ScalingSpec, oracle, simulate
from training.backtest import BacktestConfig, breakdown
from training.metrics import allocation_floor, centred_conditions, past_conditions, trailing_mean


def daily(minutes: int, seed: int, peak: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """A day-shaped rate (req/s) and Poisson demand around it, counted per minute."""
    t = np.arange(minutes)
    rate = 10.0 + peak * (0.5 - 0.5 * np.cos(2 * np.pi * t / 1440))
    demand = np.random.default_rng(seed).poisson(rate * 60) / 60.0
    return rate, demand


def test_a_demand_its_neighbours_foretell_costs_no_more_than_the_oracle() -> None:
    flat = np.full(500, 30.0)
    assert allocation_floor(flat, capacity=20.0, slo_pct=0.5, conditions=past_conditions(flat)) == 1.0
    ramp = np.repeat([10.0, 30.0, 50.0, 70.0], 300)  # three steps: the minute before knows the level after one
    assert allocation_floor(ramp, 20.0, 0.5, past_conditions(ramp)) == pytest.approx(1.0, abs=0.01)
    assert allocation_floor(ramp, 20.0, 0.5, centred_conditions(ramp, 2)) == pytest.approx(1.0, abs=0.01)


def test_bursts_only_the_oracle_sees_cost_more_and_less_with_a_looser_slo() -> None:
    rate, demand = daily(4 * 1440, seed=1)
    strict = allocation_floor(demand, capacity=5.0, slo_pct=0.5, conditions=past_conditions(demand))
    loose = allocation_floor(demand, capacity=5.0, slo_pct=5.0, conditions=past_conditions(demand))
    assert strict is not None and loose is not None
    assert 1.0 < loose < strict
    # what one minute's noise alone costs: provisioning for the Poisson 99.5% quantile of the known rate
    # meets that SLO on Poisson demand, and the floor, knowing about as much, needs no more than it
    known = np.ceil(poisson.ppf(0.995, rate * 60) / 60.0 / 5.0 - 1e-9)
    assert strict <= known.sum() / np.ceil(demand / 5.0 - 1e-9).sum() + 0.02


def test_knowing_the_minute_itself_is_the_oracle() -> None:
    _, demand = daily(2 * 1440, seed=4)
    knowing = allocation_floor(demand, 5.0, 0.5, [(demand, 200)])
    past = allocation_floor(demand, 5.0, 0.5, past_conditions(demand))
    assert knowing is not None and past is not None
    assert knowing < past


def test_trailing_mean_leaves_the_minute_out_and_skips_gaps() -> None:
    v = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    out = trailing_mean(v, 2)
    assert np.isnan(out[0])
    assert out[1:].tolist() == [1.0, 2.0, 3.0, 5.0]


def test_too_few_minutes_give_no_floor() -> None:
    v = np.full(10, 5.0)
    assert allocation_floor(v, capacity=1.0, slo_pct=0.5, conditions=past_conditions(v)) is None


def quantile_forecasts(rate: np.ndarray, levels: tuple[float, ...], steps: int = 5) -> Forecasts:
    """Calibrated forecasts: the Poisson quantiles of the true rate of each minute ahead."""
    ahead = np.stack([np.roll(rate, -k) for k in range(steps)], axis=1)  # [minute, step]
    values = np.stack([poisson.ppf(q, ahead * 60) / 60.0 for q in levels], axis=2)
    return Forecasts(values=values, levels=levels)


def test_breakdown_parts_add_up_to_predictive_over_the_oracle() -> None:
    spec = ScalingSpec(capacity=10.0, startup_s=120.0)
    cfg = BacktestConfig(spec=spec, headrooms=(-0.1, 0.0, 0.1, 0.2), floor_half_window=5)
    rate, demand = daily(3 * 1440, seed=2)
    levels = (0.5, 0.9, 0.99)
    fc = quantile_forecasts(rate, levels)
    val, test = slice(0, 1440), slice(1440, None)
    val_fc, test_fc = Forecasts(values=fc.values[val], levels=levels), Forecasts(values=fc.values[test], levels=levels)

    def pred(headroom: float) -> ScalingKnobs:
        return predictive_knobs(headroom, 0.99, slo=0.005, feedback_gain=0.01)

    rs = simulate(demand[test], predictive, pred(0.0), spec,
                  test_fc).replica_seconds
    oracle_rs = oracle(demand[test], spec).replica_seconds
    parts = breakdown(cfg, pred, rs, oracle_rs, (demand[val], val_fc), (demand[test], test_fc))
    steps = ("burst_noise", "forecaster", "startup_lead", "scale_down_guardrails")
    assert parts["oracle"] + sum(parts[k] for k in steps) == pytest.approx(parts["total"], abs=0.005)
    assert parts["total"] == pytest.approx(rs / oracle_rs, abs=0.001)
    assert parts["allocation_floor"] == pytest.approx(1.0 + parts["burst_noise"], abs=0.001)
    assert 1.0 <= parts["allocation_floor_centred"] <= parts["allocation_floor"] + 0.05
    d = demand[test]
    assert parts["integer_rounding"]["oracle"] == pytest.approx(1 - (d / 10.0).sum() * 60 / oracle_rs, abs=0.001)
    for variant in parts["variants"].values():
        assert variant["headroom"] in cfg.headrooms
        assert 0.0 <= variant["underprov_pct"] < 5.0
