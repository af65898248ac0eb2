"""Forecast accuracy metrics, pure functions over arrays (NaN = no value, left out)."""

from __future__ import annotations

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
