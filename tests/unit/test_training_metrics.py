import math

import numpy as np
import pytest

from training.metrics import (
    centred_mean,
    coverage,
    floor_table,
    horizon_table,
    mase,
    mase_scale,
    pinball,
    poisson_mad,
    smape,
)


def test_metric_values_by_hand() -> None:
    actual = np.array([1.0, 2.0, 4.0])
    point = np.array([2.0, 2.0, 2.0])
    assert mase(actual, point, scale=0.5) == pytest.approx((1 + 0 + 2) / 3 / 0.5)
    assert smape(actual, point) == pytest.approx(100 * (2 / 3 + 0 + 4 / 6) / 3)
    # p90 pinball: under-forecast by 2 costs 0.9*2, over-forecast by 1 costs 0.1*1.
    assert pinball(actual, point, 0.9) == pytest.approx((0.1 * 1 + 0 + 0.9 * 2) / 3)
    assert coverage(actual, point) == pytest.approx(2 / 3)


def test_smape_counts_both_zero_as_perfect() -> None:
    assert smape(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0


def test_mase_scale_is_seasonal_naive_in_sample_error() -> None:
    train = np.array([1.0, 2.0, 3.0, 2.0, np.nan, 5.0])
    assert mase_scale(train, season=2) == pytest.approx((2 + 0 + 3) / 3)  # the pair with NaN is left out


def test_horizon_table_scores_every_model_on_the_same_pairs() -> None:
    actual = np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 3.0]])
    good = np.stack([actual, actual + 1, actual + 2], axis=2)
    gappy = good.copy()
    gappy[0, 0, :] = np.nan
    table = horizon_table(np.nan_to_num(actual, nan=np.nan), {"a": good, "b": gappy}, [0.5, 0.9, 0.99], 1.0,
                          horizons=(1, 2))
    assert table["1"]["a"]["n"] == table["1"]["b"]["n"] == 2
    assert table["2"]["a"]["n"] == 2
    assert table["1"]["a"]["mase"] == 0.0 and table["1"]["a"]["coverage_p90"] == 1.0


def test_poisson_mad_matches_the_sum_over_the_distribution() -> None:
    def by_sum(m: float) -> float:
        return sum(abs(k - m) * math.exp(k * math.log(m) - m - math.lgamma(k + 1)) for k in range(400))

    means = np.array([0.3, 1.0, 2.5, 7.0, 40.0, 150.0])
    assert poisson_mad(means) == pytest.approx([by_sum(m) for m in means], rel=1e-9)
    assert poisson_mad(np.array([1.0]))[0] == pytest.approx(2 / math.e)
    assert poisson_mad(np.array([0.0]))[0] == 0.0


def test_centred_mean_leaves_out_the_minute_itself_and_missing_ones() -> None:
    values = np.array([1.0, 2.0, 3.0, np.nan, 5.0, np.nan])
    out = centred_mean(values, 1)
    assert out[[0, 1, 2, 3, 5]] == pytest.approx([2.0, 2.0, 2.0, 4.0, 5.0])  # a missing minute gets its neighbours'
    assert np.isnan(out[4])  # both neighbours missing


def test_floor_table_by_hand() -> None:
    actual = np.full((4, 2), 1.0 / 60)  # one request per minute
    naive = actual + 0.1
    centred = actual.copy()
    centred[0, :] = np.nan  # left out
    floor = floor_table(actual, naive, centred, step_s=60, horizons=(1, 2))
    assert floor["2"]["poisson_floor"] == pytest.approx(round((2 / math.e) / 60 / 0.1, 4))
    assert floor["1"]["centred_ma"] == 0.0 and floor["1"]["n"] == 3


def test_poisson_floor_is_what_a_forecaster_knowing_the_rate_gets_on_poisson_counts() -> None:
    rng = np.random.default_rng(0)
    rate = 0.5 + 0.4 * np.sin(np.arange(20_000) / 200.0)  # requests per second
    observed = rng.poisson(rate * 60) / 60.0
    actual = observed[:, None]
    naive = rng.poisson(rate * 60)[:, None] / 60.0  # another draw around the same rate
    floor = floor_table(actual, naive, actual, step_s=60, horizons=(1,))["1"]["poisson_floor"]
    knowing_rate = np.mean(np.abs(observed - rate)) / np.mean(np.abs(actual[:, 0] - naive[:, 0]))
    assert floor == pytest.approx(knowing_rate, rel=0.05)
    assert 0.6 < floor < 0.8  # two independent draws: the naive error is about sqrt(2) x one draw's
