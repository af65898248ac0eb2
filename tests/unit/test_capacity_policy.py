"""Per-instance capacity from what each instance served, and the guard's hold weight (policies.capacity)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lb_adapters.policies.capacity import (
    Served,
    capacities,
    check_capacity,
    guard_load,
    hold_weight,
    observe,
    update_served,
)


@dataclass(frozen=True)
class W:
    instance: str
    requests: int
    busy: float


def test_capacity_is_served_rate_over_utilisation_averaged_over_rounds() -> None:
    served: dict[str, Served] = {}
    for _ in range(20):  # b1 serves 30 req/s at 75% busy: 40 req/s; b3 60 at 75%: 80
        served = update_served(served, observe([W("b1", 60, 0.75), W("b3", 120, 0.75)], 2.0), 0.2)
    cap = capacities(served, 0.25)
    assert cap["b1"] == pytest.approx(40.0) and cap["b3"] == pytest.approx(80.0)


def test_an_idle_instance_counts_for_a_lower_bound_and_one_never_busy_for_nothing() -> None:
    served = update_served({}, {"idle": (2.0, 0.05), "nogauge": (30.0, 0.0)}, 0.2)
    cap = capacities(served, 0.25)
    assert cap["idle"] == pytest.approx(8.0)  # 2 / 0.25, not 2 / 0.05 = 40
    assert cap["nogauge"] is None


def test_a_round_without_a_busy_share_keeps_the_utilisation_and_an_unseen_instance_its_estimate() -> None:
    served = update_served({}, {"a": (30.0, 0.75)}, 0.5)
    served = update_served(served, {"a": (20.0, None)}, 0.5)
    assert served["a"] == Served(25.0, 0.75)
    served = update_served(served, {"a": (20.0, 0.0)}, 0.5)  # a gauge read 0: a real sample (no worker busy)
    assert served["a"] == Served(22.5, 0.375)
    assert update_served(served, {}, 0.5) == served


def test_check_capacity_bounds() -> None:
    cap = {"a": 50.0, "b": 50.0}
    assert check_capacity("x", ["a", "b"], cap, 90.0, 1.1, None).allowed  # 100 >= 99
    refused = check_capacity("x", ["a", "b"], cap, 100.0, 1.1, None)
    assert not refused.allowed and refused.hold_share == pytest.approx((100 - 100 / 1.1) / 100)
    assert not check_capacity("x", [], cap, 1.0, 1.1, None).allowed  # no one left
    assert check_capacity("x", ["a", "c"], cap, 1000.0, 1.1, None).allowed  # c unknown: cannot judge
    assert not check_capacity("x", ["a", "c"], cap, 1000.0, 1.1, 10.0).allowed  # c from the fallback


def test_hold_weight_gives_the_share_beside_the_others() -> None:
    others = {"b0": 100, "b1": 200, "b3": 300}
    w = hold_weight(0.0909, others, 1, 256)
    assert w / (w + 600) == pytest.approx(0.0909, abs=0.002)
    assert hold_weight(0.0001, others, 1, 256) == 1  # never 0: held is not drained
    assert hold_weight(0.9, others, 1, 256) == 256
    assert hold_weight(0.5, {}, 1, 256) == 256


def test_windows_give_their_peak_unless_the_gauge_read_now_is_given() -> None:
    windows = [W("a", 40, 0.9), W("b", 10, 0.0)]
    assert observe(windows, 2.0) == {"a": (20.0, 0.9), "b": (5.0, None)}  # a peak of 0 while serving: no gauge
    assert observe(windows, 2.0, {"a": 0.5, "b": 0.0}) == {"a": (20.0, 0.5), "b": (5.0, 0.0)}


def test_the_guard_weighs_the_averaged_load_unless_this_window_is_higher() -> None:
    """bench lb, scenario 9000: a drain passed on one 132 req/s window of a 140 req/s load."""
    served = {"a": Served(80.0, 0.8), "b": Served(60.0, 0.8)}
    assert guard_load(132.0, served) == 140.0
    assert guard_load(150.0, served) == 150.0
    assert guard_load(None, served) is None
