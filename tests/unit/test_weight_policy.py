from infra.core.settings import AdapterSettings
from lb_adapters.policies.weights import decide_weights

CFG = AdapterSettings(min_weight=1, max_step=50, deadband=4)


def test_moves_toward_prediction_limited_by_step() -> None:
    changes = decide_weights({"a": 256, "b": 20}, {"a": 100, "b": 100}, CFG)
    assert [(c.instance, c.before, c.after) for c in changes] == [("a", 100, 150), ("b", 100, 50)]
    assert "step limited" in changes[0].reason


def test_clamps_to_min_weight_so_latency_never_drains() -> None:
    (change,) = decide_weights({"a": 0}, {"a": 10}, CFG)
    assert change.after == 1 and "clamped" in change.reason


def test_deadband_ignores_small_changes() -> None:
    assert decide_weights({"a": 102}, {"a": 100}, CFG) == []
    assert len(decide_weights({"a": 104}, {"a": 100}, CFG)) == 1


def test_unknown_instances_ignored() -> None:
    assert decide_weights({"ghost": 200}, {"a": 100}, CFG) == []
