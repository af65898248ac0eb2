"""The inverse-latency baseline: the properties the load-balancer adapter relies on."""

from __future__ import annotations

import pytest
import torch

from serving.models.latency_weights import FEATURES, LatencyWeights, features_tensor
from serving.schemas import HAPROXY_MAX_WEIGHT, InstanceFeatures


def weigh(*instances: InstanceFeatures) -> list[int]:
    return LatencyWeights()(features_tensor(list(instances))).tolist()


def inst(name: str, p99: float, **extra: float) -> InstanceFeatures:
    return InstanceFeatures(instance=name, latency_p99_ms=p99, **extra)


def test_features_tensor_layout() -> None:
    x = features_tensor([inst("a", 42.0, latency_p50_ms=8.0, queue=3.0, error_rate=0.25)])
    assert x.shape == (1, len(FEATURES))
    assert x.dtype == torch.float32
    assert x[0].tolist() == [42.0, 8.0, 3.0, 0.25]


def test_faster_instance_gets_more_weight() -> None:
    fast, slow = weigh(inst("fast", 5.0), inst("slow", 40.0))
    assert fast > slow
    # Inverse latency with the 1 ms floor, rounded to the nearest step: 256 * 6/41, 256 * 6/11.
    assert slow == 37
    assert weigh(inst("fast", 5.0), inst("slower", 10.0)) == [HAPROXY_MAX_WEIGHT, 140]


def test_best_instance_gets_the_maximum() -> None:
    assert weigh(inst("a", 30.0), inst("b", 7.0), inst("c", 90.0))[1] == HAPROXY_MAX_WEIGHT
    assert weigh(inst("only", 500.0)) == [HAPROXY_MAX_WEIGHT]


@pytest.mark.parametrize(
    "p99s",
    [[5.0, 40.0], [0.0, 1e9], [1.0, 1.0, 1.0], [3.0, 30.0, 300.0, 3000.0, 3e6]],
)
def test_weights_stay_within_haproxy_range_and_never_drain_on_latency(p99s: list[float]) -> None:
    weights = weigh(*(inst(f"s{i}", p99) for i, p99 in enumerate(p99s)))
    assert all(1 <= w <= HAPROXY_MAX_WEIGHT for w in weights)
    assert max(weights) == HAPROXY_MAX_WEIGHT


def test_failing_instance_is_drained() -> None:
    healthy, failing = weigh(inst("ok", 50.0), inst("down", 1.0, error_rate=1.0))
    assert (healthy, failing) == (HAPROXY_MAX_WEIGHT, 0)
    assert weigh(inst("a", 5.0, error_rate=1.0), inst("b", 5.0, error_rate=1.0)) == [0, 0]


def test_errors_and_queue_lower_the_weight() -> None:
    clean, erring = weigh(inst("clean", 10.0), inst("erring", 10.0, error_rate=0.5))
    assert erring < clean
    idle, queued = weigh(inst("idle", 10.0, latency_p50_ms=5.0), inst("queued", 10.0, latency_p50_ms=5.0, queue=4.0))
    assert queued < idle


def test_weights_follow_instances_under_permutation() -> None:
    instances = [
        inst(f"s{i}", p99, error_rate=err) for i, (p99, err) in enumerate([(5, 0), (40, 0.1), (12, 0), (7, 1)])
    ]
    by_name = dict(zip((i.instance for i in instances), weigh(*instances), strict=True))
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        order = torch.randperm(len(instances), generator=generator).tolist()
        shuffled = [instances[i] for i in order]
        assert dict(zip((i.instance for i in shuffled), weigh(*shuffled), strict=True)) == by_name


def test_requests_batched_together_are_weighed_independently() -> None:
    first = [inst("a", 5.0), inst("b", 40.0)]
    second = [inst("c", 400.0), inst("d", 800.0), inst("e", 100.0)]
    features = torch.cat([features_tensor(first), features_tensor(second)])
    groups = torch.tensor([0, 0, 1, 1, 1])
    batched = LatencyWeights()(features, groups).tolist()
    assert batched == weigh(*first) + weigh(*second)


def test_an_unmeasured_instance_gets_its_peers_median_and_does_not_squash_them() -> None:
    """p99 0 = no request completed in the window (idle or hung): not the fastest instance."""
    weights = weigh(inst("a", 400.0), inst("b", 800.0), inst("c", 500.0), inst("idle", 0.0))
    assert weights[:3] == [HAPROXY_MAX_WEIGHT, 128, 205]
    assert weights[3] == 205  # torch's median of the measured: the lower middle
    assert weigh(inst("x", 0.0), inst("y", 0.0)) == [HAPROXY_MAX_WEIGHT, HAPROXY_MAX_WEIGHT]
