"""What the SLO costs at least on the demo's slice: a policy told the trace's smooth future.

The oracle knows every window's rate, bursts included, and pays only for them; no policy can. To tell
how much of the predictive policy's cost above it is the forecaster's and how much is the SLO's price
on bursty traffic, the demo also replays an "informed" policy. It is told each window's smooth mean
(the trace's centred moving average: the coming hour's mean, future included) and adds the headroom
that, on the rest of the trace, keeps window means within capacity in all but `slo` of the windows,
per load band (relative burst noise shrinks as load grows). It orders each window's instances a
startup ahead and gives none up that a window within the startup still needs. A causal policy meeting
the same SLO pays about this or more, unless it can foresee bursts. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BAND_EDGES = (1.5, 2.5, 3.5)  # load bands' edges, in instances' capacity
MIN_SHARE = 0.8  # a block's mean counts when at least this share of its minutes holds data


def centred_window_mean(values: np.ndarray, span: int) -> np.ndarray:
    """Each minute's mean over the `span` minutes centred on it, itself included (unlike
    `training.metrics.centred_mean`, which leaves the minute out to judge how well its neighbours explain it);
    minutes without data left out, NaN where the whole span has none."""
    ok = np.isfinite(values)
    kernel = np.ones(span)
    total = np.convolve(np.where(ok, values, 0.0), kernel, "same")
    count = np.convolve(ok.astype(float), kernel, "same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def blocks(values: np.ndarray, offset: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(first minute, mean rate) of each whole `window`-minute block aligned to minute `offset`, the mean NaN
    when too few of its minutes hold data."""
    starts = np.arange(offset % window, len(values) - window + 1, window)
    means = np.full(len(starts), np.nan)
    for k, a in enumerate(starts):
        part = values[a:a + window]
        ok = np.isfinite(part)
        if ok.sum() >= MIN_SHARE * window:
            means[k] = part[ok].mean()
    return starts, means


@dataclass(frozen=True)
class Headroom:
    """Multipliers of the smooth mean per load band: `factors[k]` below `edges[k]` (req/s), the last above."""

    edges: tuple[float, ...]
    factors: tuple[float, ...]

    def at(self, rate: float) -> float:
        return self.factors[int(np.searchsorted(self.edges, rate, side="right"))]


def fit_headroom(values: np.ndarray, smooth: int, window: int, offset: int, exclude: tuple[int, int], slo: float,
                 rate_factor: float, capacity: float) -> Headroom:
    """The (1 - slo) quantile of block mean / smooth mean per load band, over the blocks whose minutes and
    smooth mean lie outside `exclude` (minutes [a, b): the slice judged). Rates are `values` x `rate_factor`,
    bands in `capacity` units."""
    mu = centred_window_mean(values, smooth)
    starts, means = blocks(values, offset, window)
    smooth_at = mu[starts + window // 2]
    keep = np.isfinite(means) & np.isfinite(smooth_at) & (smooth_at > 0)
    reach = window // 2 + smooth // 2 + 1  # neither a block nor its smooth mean may see the slice
    middle = starts + window // 2
    keep &= (middle + reach <= exclude[0]) | (middle - reach >= exclude[1])
    load = smooth_at * rate_factor
    edges = tuple(e * capacity for e in BAND_EDGES)
    band = np.searchsorted(edges, load, side="right")
    if not keep.any():
        raise ValueError("no whole block of the trace outside the slice holds data: cannot fit a headroom")
    overall = float(np.quantile(means[keep] / smooth_at[keep], 1 - slo))
    factors = []
    for k in range(len(edges) + 1):  # a band the trace never reached takes the quantile over all bands
        ratios = means[keep & (band == k)] / smooth_at[keep & (band == k)]
        factors.append(float(np.quantile(ratios, 1 - slo)) if len(ratios) else overall)
    return Headroom(edges, tuple(factors))


def informed_counts(values: np.ndarray, smooth: int, first: int, n_windows: int, window: int, headroom: Headroom,
                    rate_factor: float, capacity: float, min_replicas: int, max_replicas: int) -> list[int]:
    """Instances for each of the `n_windows` windows from minute `first`: the smooth mean at its middle, with
    its band's headroom, in instances."""
    mu = centred_window_mean(values, smooth)
    counts = []
    for j in range(n_windows):
        rate = float(mu[min(len(mu) - 1, first + j * window + window // 2)]) * rate_factor
        need = math.ceil(rate * headroom.at(rate) / capacity) if math.isfinite(rate) else min_replicas
        counts.append(min(max_replicas, max(min_replicas, need)))
    return counts


def informed_schedule(counts: list[int], t0: float, window_s: float, startup_s: float) -> list[tuple[float, int]]:
    """(time, desired) each second from `t0`: the most any window overlapping [t, t + startup] needs, so each
    window's instances are ready when it starts and none is given up that one within the startup needs.
    Windows are `window_s` long from `t0`."""
    decided: list[tuple[float, int]] = []
    end = t0 + len(counts) * window_s
    t = t0
    while t < end:
        first = int((t - t0) // window_s)
        last = min(len(counts) - 1, int((t + startup_s - t0) // window_s))
        want = max(counts[first:last + 1])
        if not decided or decided[-1][1] != want:
            decided.append((t, want))
        t += 1.0
    return decided
