"""The health feature derivation shared by training and serving (infra.core.health_features)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infra.core.health_features import (
    COLUMN_INDEX,
    COLUMNS,
    LATENCY_COLUMNS,
    PEER_FLOORS,
    RISK_COLUMNS,
    derive,
    median_of_others,
    unknown_columns,
)


def service(**overrides: list[float]) -> dict[str, np.ndarray]:
    values = {"requests": [100.0, 100.0, 200.0, 100.0], "error_rate": [0.0, 0.0, 0.5, 0.0],
              "latency_p50_ms": [10.0, 12.0, 50.0, 11.0], "latency_p99_ms": [40.0, 44.0, 400.0, 42.0],
              "sessions": [2.0, 2.0, 20.0, 3.0], "queue": [0.0, 0.0, 7.0, 0.0],
              "resource": [0.1, 0.1, 0.9, 0.1], "busy": [0.2, 0.3, 1.0, 0.2]}
    values.update(overrides)
    return {k: np.asarray(v) for k, v in values.items()}


def col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, COLUMN_INDEX[name]]


def test_one_row_per_instance_and_one_column_per_name() -> None:
    x = derive(service())
    assert x.shape == (4, len(COLUMNS)) and x.dtype == np.float32
    assert set(RISK_COLUMNS) <= set(COLUMNS) and LATENCY_COLUMNS == COLUMNS
    assert len(set(COLUMNS)) == len(COLUMNS)


def test_own_values_are_log_scaled_and_shares_sum_to_one() -> None:
    x = derive(service())
    assert col(x, "log_p99_ms")[2] == pytest.approx(math.log1p(400.0))
    assert col(x, "log_queue")[2] == pytest.approx(math.log1p(7.0))
    assert col(x, "request_share").tolist() == pytest.approx([0.2, 0.2, 0.4, 0.2])
    assert col(x, "error_rate")[2] == pytest.approx(0.5) and col(x, "busy")[2] == pytest.approx(1.0)


def test_peer_ratios_compare_with_the_median_of_the_other_instances() -> None:
    x = derive(service())
    # instance 2's peers have p99 40, 44, 42: median 42
    assert col(x, "p99_vs_peers")[2] == pytest.approx(math.log((400 + 1) / (42 + 1)), rel=1e-6)
    # instance 0's peers: 44, 400, 42 -> median 44
    assert col(x, "p99_vs_peers")[0] == pytest.approx(math.log((40 + 1) / (44 + 1)), rel=1e-6)
    floor = PEER_FLOORS["error_rate"]
    assert col(x, "error_vs_peers")[2] == pytest.approx(math.log((0.5 + floor) / floor), rel=1e-5)
    assert col(x, "error_vs_peers")[0] == pytest.approx(math.log(floor / ((0.0 + 0.0) / 2 + floor)), abs=1e-6)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9])
def test_median_of_others_matches_the_definition(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.integers(0, 5, n).astype(float)  # ties included
    expected = [np.median(np.delete(x, i)) for i in range(n)]
    assert median_of_others(x).tolist() == pytest.approx(expected)


def test_a_lone_instance_is_like_its_peers() -> None:
    x = derive({"requests": np.array([50.0]), "latency_p99_ms": np.array([300.0]), "error_rate": np.array([0.2])})
    assert x.shape == (1, len(COLUMNS))
    for name in ("p99_vs_peers", "error_vs_peers", "queue_vs_peers"):
        assert col(x, name)[0] == 0.0
    assert col(x, "request_share")[0] == 1.0


def test_zeros_nan_and_missing_fields_give_finite_values() -> None:
    zeros = derive({"requests": np.zeros(3)})
    assert np.isfinite(zeros).all() and (zeros[:, [COLUMN_INDEX[c] for c in RISK_COLUMNS if c != "request_share"]]
                                         == 0).all()
    assert col(zeros, "request_share").tolist() == pytest.approx([1 / 3] * 3)
    nan = derive(service(latency_p99_ms=[math.nan, 1.0, math.inf, 3.0], queue=[-1.0, 0, 0, 0]))
    assert np.isfinite(nan).all()


def test_offered_load_defaults_to_the_current_one() -> None:
    x = derive(service())
    assert col(x, "offered_vs_current").tolist() == [0.0] * 4
    y = derive(service(), offered=np.array([300.0, 0, 0, 0]))
    assert col(y, "log_offered")[0] == pytest.approx(math.log1p(300.0))
    assert col(y, "offered_vs_current")[0] == pytest.approx(math.log1p(300.0) - math.log1p(100.0))


def test_columns_pick_and_order_the_output() -> None:
    full = derive(service())
    picked = derive(service(), columns=["queue_vs_peers", "log_p50_ms"])
    assert np.array_equal(picked, full[:, [COLUMN_INDEX["queue_vs_peers"], COLUMN_INDEX["log_p50_ms"]]])
    with pytest.raises(ValueError, match="unknown health feature column 'nope'"):
        derive(service(), columns=["nope"])
    assert unknown_columns(["log_p50_ms", "nope"]) == ["nope"]
