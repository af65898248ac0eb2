"""Classical baselines on the same origins as the forecaster: seasonal naive, EWMA, Holt-Winters.

Each gives a point forecast per origin and horizon; its upper quantiles add the empirical
quantiles of its own residuals on the training range (per horizon), so the baselines get a fair
p90 too. The moving average is the bar the issue sets for the model ("a 10-minute moving
average reaches 0.65 x seasonal naive"), so it is reported as well.

Origin t means: minutes before t are known, the first forecast minute is t.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from training.fit import targets, windows

DAY = 1440


def seasonal_naive(values: np.ndarray, origins: np.ndarray, horizon: int, season: int = DAY) -> np.ndarray:
    """Minute t + h - 1 forecast by the same minute a season earlier (NaN when that is missing)."""
    steps = origins[:, None] + np.arange(horizon)[None, :] - season
    out = np.full(steps.shape, np.nan)
    ok = steps >= 0
    out[ok] = values[steps[ok]]
    # A same-minute-yesterday that lies after the origin does not exist when horizon > season.
    out[steps >= origins[:, None]] = np.nan
    return out


def moving_average(values: np.ndarray, origins: np.ndarray, horizon: int, window: int = 10) -> np.ndarray:
    hist = windows(values, origins, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN, as they should
        level = np.nanmean(hist, axis=1)
    return np.repeat(level[:, None], horizon, axis=1)


def ewma_levels(values: np.ndarray, alpha: float) -> np.ndarray:
    """level[t] = EWMA of the minutes before t (missing minutes leave it unchanged)."""
    out = np.full(len(values) + 1, np.nan)
    level = math.nan
    for i, v in enumerate(values):
        out[i] = level
        if v == v:  # not NaN
            level = v if level != level else alpha * v + (1.0 - alpha) * level
    out[len(values)] = level
    return out


def ewma(values: np.ndarray, origins: np.ndarray, horizon: int, alpha: float) -> np.ndarray:
    level = ewma_levels(values, alpha)[origins]
    return np.repeat(level[:, None], horizon, axis=1)


def tune_ewma(values: np.ndarray, train: tuple[int, int], horizon_check: int = 5,
              grid: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)) -> float:
    """The smoothing factor with the lowest training MAE at `horizon_check` minutes."""
    origins = np.arange(max(train[0], 1), train[1] - horizon_check)
    actual = values[origins + horizon_check - 1]
    best, best_alpha = math.inf, grid[0]
    for alpha in grid:
        err = np.abs(actual - ewma_levels(values[: train[1]], alpha)[origins])
        score = float(np.nanmean(err))
        if score < best:
            best, best_alpha = score, alpha
    return best_alpha


class HoltWinters:
    """Additive Holt-Winters with damped trend: parameters fitted by statsmodels on the longest
    complete stretch of training data; the states are then run forward over the whole series
    with those parameters (statsmodels cannot take missing minutes; here a missing minute only
    advances the trend, the state is not updated), giving a forecast from every origin."""

    def __init__(self, values: np.ndarray, train: tuple[int, int], season: int = DAY, fit_days: int = 7) -> None:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        lo, hi = _longest_finite_run(values, *train)
        lo = max(lo, hi - fit_days * season)
        if hi - lo < 2 * season + 1:
            raise ValueError("Holt-Winters needs two complete seasons of training data without gaps")
        fitted = ExponentialSmoothing(values[lo:hi], trend="add", damped_trend=True, seasonal="add",
                                      seasonal_periods=season, initialization_method="heuristic").fit(use_brute=False)
        p = fitted.params
        self.alpha, self.beta, self.gamma = float(p["smoothing_level"]), float(p["smoothing_trend"]), \
            float(p["smoothing_seasonal"])
        self.phi = float(p["damping_trend"])
        self.season = season
        self.start = lo
        self._run(values, float(p["initial_level"]), float(p["initial_trend"]), np.asarray(p["initial_seasons"]))

    def _run(self, values: np.ndarray, level: float, trend: float, seasons: np.ndarray) -> None:
        n, m = len(values), self.season
        self.levels = np.full(n + 1, np.nan)
        self.trends = np.full(n + 1, np.nan)
        # seas[i] = seasonal state of minute i (filled as minutes are observed), initial ones before start.
        self.seas = np.full(n + 1 + m, np.nan)
        self.seas[self.start : self.start + m] = seasons  # season of minutes start .. start + m - 1
        a, b, g, phi = self.alpha, self.beta, self.gamma, self.phi
        for t in range(self.start, n):
            self.levels[t], self.trends[t] = level, trend
            s_prev = self.seas[t - m] if t - m >= self.start else self.seas[t]
            y = values[t]
            if y == y:
                new_level = a * (y - s_prev) + (1 - a) * (level + phi * trend)
                trend = b * (new_level - level) + (1 - b) * phi * trend
                self.seas[t] = g * (y - level - phi * trend) + (1 - g) * s_prev if t - m >= self.start else s_prev
                level = new_level
            else:
                self.seas[t] = s_prev
                level = level + phi * trend
                trend = phi * trend
        self.levels[n], self.trends[n] = level, trend

    def forecast(self, origins: np.ndarray, horizon: int) -> np.ndarray:
        h = np.arange(1, horizon + 1)
        damp = np.cumsum(self.phi ** h)
        level, trend = self.levels[origins], self.trends[origins]
        steps = origins[:, None] + h[None, :] - 1
        back = steps - self.season * np.ceil((steps - origins[:, None] + 1) / self.season).astype(np.int64)
        seas = np.where(back >= self.start, self.seas[np.maximum(back, 0)], np.nan)
        return level[:, None] + damp[None, :] * trend[:, None] + seas


def _longest_finite_run(values: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    ok = np.concatenate([[False], np.isfinite(values[lo:hi]), [False]])
    edges = np.flatnonzero(np.diff(ok.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    if len(starts) == 0:
        raise ValueError("no training data")
    i = int(np.argmax(ends - starts))
    return lo + int(starts[i]), lo + int(ends[i])


def residual_quantiles(values: np.ndarray, point: np.ndarray, origins: np.ndarray, quantiles: list[float]
                       ) -> np.ndarray:
    """[horizon, quantiles] empirical quantiles of actual - point over `origins`."""
    actual = targets(values, origins, point.shape[1]).astype(np.float64)
    resid = actual - point
    out = np.zeros((point.shape[1], len(quantiles)))
    for j, q in enumerate(quantiles):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[:, j] = np.nan_to_num(np.nanquantile(resid, q, axis=0))
    return out


def with_quantiles(point: np.ndarray, offsets: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """[origins, horizon, quantiles]: the point at p50, point + residual quantile above it, sorted."""
    out = point[:, :, None] + offsets[None, :, :]
    out[:, :, quantiles.index(0.5)] = point
    out = np.maximum(out, 0.0)
    return np.sort(out, axis=2)
