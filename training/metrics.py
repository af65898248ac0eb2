"""Forecast accuracy metrics, pure functions over arrays (NaN = no value, left out)."""

from __future__ import annotations

import math

import numpy as np

SEASON_MIN = 1440


def mase_scale(train: np.ndarray, season: int = SEASON_MIN) -> float:
    """In-sample mean absolute error of the seasonal naive forecast: MASE's denominator."""
    diff = np.abs(train[season:] - train[:-season])
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        raise ValueError("no pair of minutes a season apart in the training data; MASE is undefined")
    return float(np.mean(diff))


def mase(actual: np.ndarray, point: np.ndarray, scale: float) -> float:
    return float(np.mean(np.abs(actual - point)) / scale)


def smape(actual: np.ndarray, point: np.ndarray) -> float:
    """Symmetric MAPE in percent; a minute where both are 0 counts as a perfect 0."""
    denom = np.abs(actual) + np.abs(point)
    ratio = np.divide(2.0 * np.abs(actual - point), denom, out=np.zeros_like(denom, dtype=np.float64),
                      where=denom > 0)
    return float(100.0 * np.mean(ratio))


def pinball(actual: np.ndarray, quantile: np.ndarray, level: float) -> float:
    diff = actual - quantile
    return float(np.mean(np.maximum(level * diff, (level - 1.0) * diff)))


def coverage(actual: np.ndarray, upper: np.ndarray) -> float:
    return float(np.mean(actual <= upper))


def horizon_table(
    actual: np.ndarray,
    forecasts: dict[str, np.ndarray],
    quantiles: list[float],
    scale: float,
    horizons: tuple[int, ...] = (1, 5, 15, 30),
) -> dict[str, dict[str, dict[str, float]]]:
    """{horizon: {model: {mase, smape, pinball_p90, coverage_p90, n}}}.

    `actual` is [origins, horizon]; each forecast [origins, horizon, quantiles]. Every model is
    judged on the same (origin, horizon) pairs: those where the actual and all forecasts exist.
    """
    p50, p90 = quantiles.index(0.5), quantiles.index(0.9)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for h in horizons:
        y = actual[:, h - 1]
        ok = np.isfinite(y)
        for f in forecasts.values():
            ok &= np.all(np.isfinite(f[:, h - 1, :]), axis=1)
        row: dict[str, dict[str, float]] = {}
        for name, f in forecasts.items():
            point, upper = f[ok, h - 1, p50], f[ok, h - 1, p90]
            row[name] = {
                "mase": round(mase(y[ok], point, scale), 4),
                "smape": round(smape(y[ok], point), 3),
                "pinball_p90": round(pinball(y[ok], upper, 0.9), 5),
                "coverage_p90": round(coverage(y[ok], upper), 4),
                "n": int(ok.sum()),
            }
        out[str(h)] = row
    return out


def poisson_mad(mean: np.ndarray) -> np.ndarray:
    """E|X - m| for X ~ Poisson(m), elementwise: 2 e^-m m^(k+1) / k! with k = floor(m)."""
    m = np.asarray(mean, dtype=np.float64)
    k = np.floor(m)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    with np.errstate(divide="ignore"):
        log_mad = math.log(2.0) - m + (k + 1.0) * np.log(m) - lgamma(k + 1.0)
    return np.where(m > 0, np.exp(log_mad), 0.0)


def centred_mean(values: np.ndarray, half: int) -> np.ndarray:
    """Mean of the `half` minutes before and the `half` after each minute, itself left out (NaN-aware).

    It reads the future, so it is no forecaster: it shows how much of a minute two-sided
    smoothing can explain."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    cum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cnt = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(v))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(v))
    total = cum[hi] - cum[lo] - np.where(ok, v, 0.0)
    count = cnt[hi] - cnt[lo] - ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def floor_table(actual: np.ndarray, naive: np.ndarray, centred: np.ndarray, step_s: int,
                horizons: tuple[int, ...] = (1, 5, 15, 30)) -> dict[str, dict[str, float]]:
    """How low MASE can go, as ratios to seasonal naive's error on the same minutes.

    `actual`, `naive` (its point forecast) and `centred` (`centred_mean` at each target minute) are
    [origins, horizon] in requests per second. `poisson_floor`: the error of a forecaster that knew
    each minute's rate exactly, if requests were Poisson around it (rate plugged in from the
    minute itself; real traffic is burstier, so this is a lower bound). `centred_ma`: the error of
    the two-sided moving average, which sees the minutes after the target."""
    out: dict[str, dict[str, float]] = {}
    for h in horizons:
        y, sn, cm = actual[:, h - 1], naive[:, h - 1], centred[:, h - 1]
        ok = np.isfinite(y) & np.isfinite(sn) & np.isfinite(cm)
        naive_mae = float(np.mean(np.abs(y[ok] - sn[ok]))) if ok.any() else 0.0
        if naive_mae == 0.0:
            continue
        counts = np.clip(y[ok], 0.0, None) * step_s
        out[str(h)] = {
            "poisson_floor": round(float(np.mean(poisson_mad(counts))) / step_s / naive_mae, 4),
            "centred_ma": round(float(np.mean(np.abs(y[ok] - cm[ok]))) / naive_mae, 4),
            "n": int(ok.sum()),
        }
    return out


def trailing_mean(values: np.ndarray, n: int) -> np.ndarray:
    """Mean of the `n` minutes before each minute, itself left out (NaN-aware; NaN when none has data)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    cum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cnt = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(v))
    lo = np.maximum(i - n, 0)
    total, count = cum[i] - cum[lo], cnt[i] - cnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def past_conditions(demand: np.ndarray, level_minutes: int = 10) -> list[tuple[np.ndarray, int]]:
    """What a forecaster knows of a minute, for `allocation_floor`: the minute before it (8 bins) and the
    mean of the `level_minutes` before it (20 bins)."""
    d = np.asarray(demand, dtype=np.float64)
    return [(trailing_mean(d, level_minutes), 20), (trailing_mean(d, 1), 8)]


def centred_conditions(demand: np.ndarray, half: int) -> list[tuple[np.ndarray, int]]:
    """The minutes on both sides, future included (`centred_mean`, 60 bins), for `allocation_floor`."""
    return [(centred_mean(np.asarray(demand, dtype=np.float64), half), 60)]


def allocation_floor(demand: np.ndarray, capacity: float, slo_pct: float,
                     conditions: list[tuple[np.ndarray, int]]) -> float | None:
    """How few replica-minutes a policy knowing `conditions` of each minute could need, as a ratio to the oracle.

    The policy imagined here knows, for each minute, the given values (each cut into its number of
    quantile bins: `past_conditions`, what a forecaster could know; `centred_conditions`, the future
    too) and, in-sample, how demand spreads in each cell; it provisions per cell the count minimising
    replicas + lam x misses, with the lam that bills least within `slo_pct`, then drops replicas where
    they serve fewest minutes until the allowance is spent: it puts its misses where a replica buys
    the least. It starts replicas at once and fits the spread on the minutes it is judged on, so it is
    no policy but a floor: the part of the gap to the oracle that is each minute's own burst, which
    only the oracle knows. None: too few minutes."""
    d = np.asarray(demand, dtype=np.float64)
    ok = np.isfinite(d)
    for values, _ in conditions:
        ok &= np.isfinite(values)
    d = d[ok]
    if len(d) < 100:
        return None
    cell = np.zeros(len(d), dtype=np.int64)
    for values, bins in conditions:
        v = np.asarray(values, dtype=np.float64)[ok]
        edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1))[1:-1])
        cell = cell * (len(edges) + 1) + np.searchsorted(edges, v, side="right")
    which = np.unique(cell, return_inverse=True)[1].ravel()
    oracle = np.ceil(d / capacity - 1e-9)
    counts = np.arange(int(oracle.max()) + 1)
    n = np.bincount(which).astype(np.float64)
    short = d[:, None] > counts[None, :] * capacity + 1e-9  # [minute, replicas]: that many would not serve it
    misses = np.stack([np.bincount(which, weights=short[:, r], minlength=len(n)) for r in counts], axis=1)
    allowed = slo_pct / 100.0 * len(d)
    rows = np.arange(len(n))
    best: np.ndarray | None = None
    for lam in np.geomspace(1e-3, 1e7, 4000):
        pick = np.argmin(n[:, None] * counts[None, :] + lam * misses, axis=1)
        if misses[rows, pick].sum() <= allowed + 1e-9 and (best is None or (n * pick).sum() < (n * best).sum()):
            best = pick
    if best is None:
        return None
    # spend what is left of the allowance: drop a replica where it serves the fewest minutes per minute billed
    while True:
        used = misses[rows, best].sum()
        extra = np.where(best > 0, misses[rows, np.maximum(best - 1, 0)] - misses[rows, best], np.inf)
        fits = (extra <= allowed - used + 1e-9) & (best > 0)
        if not fits.any():
            break
        score = np.where(fits, extra / np.maximum(n, 1.0), np.inf)
        best = best.copy()
        best[int(np.argmin(score))] -= 1
    return round(float((n * best).sum()) / float(oracle.sum()), 4)
