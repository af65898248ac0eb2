"""The demo's informed bound: the smooth mean it is told, the headroom it fits, the schedule it keeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infra.core.features_table import ServiceWindow
from infra.core.scaling import replay_schedule
from infra.informed_bound import Headroom, blocks, centred_window_mean, fit_headroom, informed_counts, informed_schedule


def test_centred_window_mean_leaves_out_missing_minutes() -> None:
    values = np.array([1.0, np.nan, 3.0, 5.0, np.nan, np.nan, np.nan])
    mu = centred_window_mean(values, 3)
    assert mu[0] == 1.0  # (1) : the edge and the NaN are left out
    assert mu[1] == 2.0  # (1 + 3) / 2
    assert mu[3] == 4.0  # (3 + 5) / 2
    assert math.isnan(mu[5])  # a span without data


def test_blocks_are_aligned_and_need_most_of_their_minutes() -> None:
    values = np.arange(25, dtype=float)
    values[13:15] = np.nan
    starts, means = blocks(values, offset=2, window=5)
    assert list(starts) == [2, 7, 12, 17]
    assert means[0] == 4.0 and means[1] == 9.0
    assert math.isnan(means[2])  # 3 of 5 minutes: below the share
    assert means[3] == 19.0


def test_headroom_is_the_quantile_of_bursts_outside_the_slice() -> None:
    rng = np.random.default_rng(3)
    n = 30_000
    values = np.full(n, 1.0) * rng.lognormal(0.0, 0.3, n)  # bursts around a flat mean
    values[10_000:10_600] = 50.0  # the judged slice: wildly above, must not count
    head = fit_headroom(values, 60, 10, 0, (10_000, 10_600), slo=0.05, rate_factor=20.0, capacity=10.0)
    assert len(head.factors) == 4
    # a mean of ~20 req/s lies in the band between 1.5 and 2.5 instances of 10 req/s
    starts, means = blocks(values, 0, 10)
    mu = centred_window_mean(values, 60)[starts + 5]
    outside = (starts + 10 <= 10_000) | (starts >= 10_600)
    ratios = (means / mu)[outside & np.isfinite(means)]
    assert head.at(20.0) == pytest.approx(float(np.quantile(ratios, 0.95)), rel=0.02)
    assert 1.0 < head.at(20.0) < 1.5  # the slice's 50s would have made it far larger
    assert head.at(100.0) == head.at(5.0)  # bands the trace never reached: the quantile over all blocks


def test_headroom_without_data_outside_the_slice_is_refused() -> None:
    values = np.full(2_000, np.nan)
    values[:100] = 1.0
    with pytest.raises(ValueError, match="outside the slice"):
        fit_headroom(values, 60, 10, 0, (0, 100), slo=0.005, rate_factor=20.0, capacity=10.0)


def test_counts_follow_the_smooth_mean_with_the_band_headroom() -> None:
    values = np.concatenate([np.full(300, 1.0), np.full(300, 3.0)])
    head = Headroom(edges=(15.0, 25.0, 35.0), factors=(2.0, 1.5, 1.2, 1.1))
    counts = informed_counts(values, 60, 0, 60, 10, head, rate_factor=10.0, capacity=10.0, min_replicas=1,
                             max_replicas=8)
    assert counts[0] == 2  # 10 req/s x 2.0 / 10
    assert counts[-1] == 4  # 30 req/s x 1.2 / 10 = 3.6
    assert max(counts) <= 8 and min(counts) >= 1


def test_schedule_has_every_window_ready_and_gives_capacity_back() -> None:
    counts = [1, 1, 3, 3, 5, 2, 2, 1, 1, 1]
    t0, window_s, startup_s, cap = 1000.0, 10.0, 20.0, 10.0
    decided = informed_schedule(counts, t0, window_s, startup_s)
    assert decided[0] == (t0, 3)  # [t0, t0 + startup] reaches windows 0 to 2: window 2 is ordered now
    windows = [ServiceWindow(start_s=int(t0 + j * window_s), end_s=int(t0 + (j + 1) * window_s), requests=0,
                             rate=c * cap - 0.5) for j, c in enumerate(counts)]
    rs, under = replay_schedule(decided, 1, startup_s, windows, cap, t0, t0 + len(counts) * window_s)
    assert under == 0  # each window's instances were ready when it began
    assert decided[-1][1] == 1  # and given back once no window within the startup needed them
    assert rs < max(counts) * len(counts) * window_s
