import pytest

from infra.core.settings import AdapterSettings
from lb_adapters.policies.weights import OverloadGuard, decide_weights

CFG = AdapterSettings(min_weight=1, max_step=50, deadband=4)


def test_moves_toward_prediction_limited_by_step() -> None:
    changes = decide_weights({"a": 256, "b": 20}, {"a": 100, "b": 100}, CFG)
    assert [(c.instance, c.before, c.after) for c in changes] == [("a", 100, 150), ("b", 100, 50)]
    assert "step limited" in changes[0].reason


def test_clamps_positive_predictions_to_min_weight() -> None:
    (change,) = decide_weights({"a": 0, "b": 1}, {"a": 10, "b": 0}, AdapterSettings(min_weight=5, max_step=50,
                                                                                  deadband=4))[1:]
    assert change.instance == "b" and change.after == 5 and "clamped" in change.reason


def test_predicted_zero_drains_at_once() -> None:
    """Issue 15 item 5: a predicted 0 is a drain, not clamped to min_weight, and not step-limited."""
    changes = decide_weights({"a": 0, "b": 100}, {"a": 200, "b": 100}, CFG)
    assert [(c.instance, c.before, c.after) for c in changes] == [("a", 200, 0)]
    assert "drained" in changes[0].reason
    assert decide_weights({"a": 0, "b": 100}, {"a": 0, "b": 100}, CFG) == []  # already drained: nothing to do


def test_never_drains_the_last_server() -> None:
    changes = decide_weights({"a": 0, "b": 0}, {"a": 100, "b": 100}, CFG)
    assert [(c.instance, c.after) for c in changes] == [("a", 50), ("b", 50)]  # towards min_weight, step-limited
    assert all("no server with a positive weight" in c.reason for c in changes)
    # A server the prediction does not cover still serves, so the zeros may drain.
    assert [c.after for c in decide_weights({"a": 0}, {"a": 100, "c": 100}, CFG)] == [0]
    # ... but not if that server is itself at 0.
    assert [c.after for c in decide_weights({"a": 0}, {"a": 100, "c": 0}, CFG)] == [50]


def test_readmits_from_zero_below_the_deadband() -> None:
    (change,) = decide_weights({"a": 2, "b": 100}, {"a": 0, "b": 100}, CFG)
    assert (change.before, change.after) == (0, 2)


def test_deadband_ignores_small_changes() -> None:
    assert decide_weights({"a": 102}, {"a": 100}, CFG) == []
    assert len(decide_weights({"a": 104}, {"a": 100}, CFG)) == 1


def test_unknown_instances_ignored() -> None:
    assert decide_weights({"ghost": 200}, {"a": 100}, CFG) == []


def test_an_instance_without_a_window_goes_back_to_neutral() -> None:
    """Issue 15 item 5: no recent window is unknown, not frozen at the last predicted weight."""
    cfg = AdapterSettings(min_weight=1, max_step=50, deadband=4, unknown_weight=100)
    changes = decide_weights({"a": 100}, {"a": 100, "slow": 10, "fast": 256, "drained": 0}, cfg)
    assert [(c.instance, c.before, c.after) for c in changes] == [("fast", 256, 206), ("slow", 10, 60)]
    assert all("no recent window" in c.reason for c in changes)
    assert "step limited" in changes[0].reason
    # Near neutral already: inside the deadband, nothing to do.
    assert decide_weights({"a": 100}, {"a": 100, "b": 98}, cfg) == []
    # No window at all for the service: the pipeline is down, not the instances; every weight holds.
    assert decide_weights({}, {"a": 100, "slow": 10}, cfg) == []


def test_smoothing_averages_predictions_but_never_delays_a_drain() -> None:
    from lb_adapters.policies.weights import smooth

    first = smooth({"a": 200, "b": 100}, {}, 0.3)
    assert first == {"a": 200.0, "b": 100.0}  # a new instance starts at its prediction
    second = smooth({"a": 100, "b": 0}, first, 0.3)
    assert second["a"] == 0.3 * 100 + 0.7 * 200  # moves 30% of the way to the new prediction
    assert second["b"] == 0.0  # a drain passes at once
    assert smooth({"b": 150}, second, 0.3)["b"] == 150.0  # after a drain it starts again from the prediction
    assert smooth({"a": 100}, first, 1.0)["a"] == 100.0  # 1: the prediction alone


def test_a_predicted_zero_the_rest_lack_capacity_for_is_held_at_a_low_weight() -> None:
    """The overload guard (issue 15, scenario 9000): draining b2 would leave 140 req/s for 140 x 1.1."""
    current = {"b0": 100, "b1": 100, "b2": 100, "b3": 100}
    predicted = {"b0": 60, "b1": 120, "b2": 0, "b3": 240}
    guard = OverloadGuard({"b0": 20.0, "b1": 40.0, "b2": 60.0, "b3": 80.0}, 140.0, 1.1)
    changes = {c.instance: c for c in decide_weights(predicted, current, CFG, guard)}
    held = changes["b2"]
    assert 0 < held.after < 60 and "held at" in held.reason and "instead of drained" in held.reason
    assert held.after / (held.after + 60 + 120 + 240) == pytest.approx((140 - 140 / 1.1) / 140, abs=0.01)
    # enough capacity left (load 100): the zero drains as before
    guard = OverloadGuard(guard.capacity, 100.0, 1.1)
    assert {c.instance: c.after for c in decide_weights(predicted, current, CFG, guard)}["b2"] == 0


def test_a_hold_caps_the_weight_at_once_and_only_downwards() -> None:
    changes = decide_weights({"a": 200, "b": 100}, {"a": 200, "b": 100}, CFG, holds={"a": 20})
    assert [(c.instance, c.after) for c in changes] == [("a", 20)]  # no step limit: a hold is a partial drain
    assert "held at 20" in changes[0].reason
    assert decide_weights({"a": 10, "b": 100}, {"a": 10, "b": 100}, CFG, holds={"a": 20}) == []  # under the cap
