import numpy as np
import pytest

from training.metrics import coverage, horizon_table, mase, mase_scale, pinball, smape


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
