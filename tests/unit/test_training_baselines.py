import numpy as np
import pytest

from training.baselines import (
    HoltWinters,
    ewma,
    ewma_levels,
    moving_average,
    residual_quantiles,
    seasonal_naive,
    tune_ewma,
    with_quantiles,
)


def daily(days: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(days * 1440)
    rng = np.random.default_rng(seed)
    return 5 + 3 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, noise, len(t)) if noise else \
        5 + 3 * np.sin(2 * np.pi * t / 1440)


def test_seasonal_naive_repeats_yesterday_and_gives_nan_without_it() -> None:
    values = np.arange(3000, dtype=float)
    out = seasonal_naive(values, np.array([1000, 2000]), horizon=3)
    assert np.isnan(out[0]).all()  # minute 1000 has no yesterday
    assert out[1].tolist() == [560.0, 561.0, 562.0]


def test_ewma_skips_missing_minutes_and_forecasts_flat() -> None:
    levels = ewma_levels(np.array([4.0, np.nan, 8.0]), alpha=0.5)
    assert np.isnan(levels[0]) and levels[1] == 4.0 and levels[2] == 4.0 and levels[3] == 6.0
    assert ewma(np.array([4.0, np.nan, 8.0]), np.array([3]), 2, 0.5).tolist() == [[6.0, 6.0]]


def test_tune_ewma_prefers_fast_smoothing_on_a_random_walk() -> None:
    walk = np.cumsum(np.random.default_rng(2).normal(0, 1, 3000)) + 100
    assert tune_ewma(walk, (0, 3000)) >= 0.3


def test_moving_average_ignores_missing_minutes() -> None:
    values = np.array([1.0, np.nan, 3.0, 5.0])
    assert moving_average(values, np.array([4]), 2, window=3).tolist() == [[4.0, 4.0]]


def test_holt_winters_learns_a_clean_daily_cycle() -> None:
    values = daily(5)
    values[6000:6100] = np.nan  # a gap after the fit range must not break the run-forward
    hw = HoltWinters(values, (0, 4 * 1440))
    origins = np.arange(4 * 1440 + 200, 5 * 1440 - 30, 37)
    fc = hw.forecast(origins, 30)
    actual = values[origins[:, None] + np.arange(30)[None, :]]
    ok = np.isfinite(actual)
    assert np.mean(np.abs(fc[ok] - actual[ok])) < 0.1


def test_holt_winters_needs_two_complete_seasons() -> None:
    with pytest.raises(ValueError, match="two complete seasons"):
        HoltWinters(daily(3), (0, 1440 + 100))


def test_residual_quantiles_give_calibrated_upper_bands() -> None:
    values = daily(4, noise=0.5)
    origins = np.arange(1440, 4 * 1440 - 5)
    point = seasonal_naive(values, origins, 5)
    offsets = residual_quantiles(values, point, origins, [0.5, 0.9, 0.99])
    fc = with_quantiles(point, offsets, [0.5, 0.9, 0.99])
    actual = values[origins[:, None] + np.arange(5)[None, :]]
    assert np.all(np.diff(fc, axis=2) >= 0)
    assert np.mean(actual <= fc[:, :, 1]) == pytest.approx(0.9, abs=0.02)
