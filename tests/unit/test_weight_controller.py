"""The weight controller's round with in-memory stand-ins for its I/O (features, serving, HAProxy, the
record): what it aims at, what it applies and what it records. The real ones are in
tests/integration/test_adapt_round_errors.py and test_bench_lb.py."""

from __future__ import annotations

from infra.core.settings import AdapterSettings
from lb_adapters.controller import WeightController
from lb_adapters.features import WindowFeatures
from lb_adapters.policies.drain import DrainKnobs
from serving.schemas import InstanceFeatures, InstanceWeight, WeightsRequest, WeightsResponse
from tests.unit.decision_sinks import RecordingSink


class Features:
    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [InstanceFeatures(instance=i, latency_p99_ms=10.0) for i in ("a", "b")]


class Predictor:
    def __init__(self) -> None:
        self.rounds: list[dict[str, int]] = []
        self.requests: list[WeightsRequest] = []

    def weights(self, request: WeightsRequest) -> WeightsResponse:
        self.requests.append(request)
        answer = self.rounds.pop(0)
        return WeightsResponse(service=request.service, model="m", model_version="v1",
                               weights=[InstanceWeight(instance=i, weight=w) for i, w in answer.items()])


class Balancer:
    name = "haproxy"

    def __init__(self) -> None:
        self.current = {"a": 100, "b": 100, "idle": 20}

    def weights(self, backend: str) -> dict[str, int]:
        return dict(self.current)

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self.current[server] = weight


def test_rounds_aim_at_smoothed_predictions_and_record_the_raw_ones() -> None:
    predictor, balancer, record = Predictor(), Balancer(), RecordingSink()
    cfg = AdapterSettings(smoothing=0.5, max_step=256, deadband=1, unknown_weight=100)
    controller = WeightController(Features(), predictor, balancer, record, cfg, backend="web")
    predictor.rounds = [{"a": 200, "b": 100}, {"a": 100, "b": 0}]

    first = controller.step("web")
    assert balancer.current == {"a": 200, "b": 100, "idle": 100}  # no history yet; `idle` has no window
    assert {d.target: d.reason for d in first.decisions}["web/idle"].startswith("no recent window")

    second = controller.step("web")
    assert balancer.current["a"] == 150  # halfway from 200 to this round's 100
    assert balancer.current["b"] == 0  # a drain is never smoothed
    reasons = {d.target: d.reason for d in second.decisions}
    assert "this round's prediction 100" in reasons["web/a"]
    assert "smoothed" not in reasons["web/b"]
    # the record keeps what the model said, not the smoothed value
    assert [(p.instance, p.value) for p in record.predictions[-2:]] == [("a", 100.0), ("b", 0.0)]


class Busy:
    """Two instances of unequal capacity: a serves 60 requests per 2 s window at 75 % busy (40 req/s),
    b 20 at 50 % (20 req/s); 40 req/s in all."""

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [InstanceFeatures(instance="a", latency_p99_ms=10.0, requests=60, busy=0.75),
                InstanceFeatures(instance="b", latency_p99_ms=10.0, requests=20, busy=0.5)]


def test_the_window_length_is_sent_and_a_zero_the_rest_cannot_carry_is_held_not_drained() -> None:
    predictor, balancer, record = Predictor(), Balancer(), RecordingSink()
    balancer.current = {"a": 100, "b": 100}
    cfg = AdapterSettings(smoothing=1.0, max_step=256, deadband=1)
    controller = WeightController(Busy(), predictor, balancer, record, cfg, backend="web", window_s=2.0,
                                  overload=DrainKnobs(capacity_margin=1.1))
    predictor.rounds = [{"a": 0, "b": 100}]
    report = controller.step("web")
    assert predictor.requests[0].window_s == 2.0
    # b alone (20 req/s) cannot take 40 req/s: a keeps the share b cannot take, at a low weight
    assert 0 < balancer.current["a"] < 256
    assert "instead of drained" in report.decisions[0].reason and report.decisions[0].action == "set_weight"
    # a hold from the health policy caps a weight at once
    predictor.rounds = [{"a": 200, "b": 100}]
    controller.step("web", holds={"a": 7})
    assert balancer.current["a"] == 7


class Shop:
    """Three instances serving 11, 8 and 12 req/s in 2 s windows, ~55 % busy on average (`busy_mean`)
    but with a window peak of 1: read by the peak, each could serve only what it serves."""

    def __init__(self, mean: float) -> None:
        self.mean = mean

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [WindowFeatures(instance=n, latency_p99_ms=10.0, requests=2 * rps, busy=1.0, busy_mean=self.mean)
                for n, rps in (("a", 11), ("b", 8), ("c", 12))]


def test_a_zero_is_weighed_against_the_capacity_of_the_windows_mean_busy_share() -> None:
    weights = {}
    for mean in (0.55, 0.0):
        predictor, balancer = Predictor(), Balancer()
        balancer.current = {"a": 100, "b": 100, "c": 100}
        controller = WeightController(Shop(mean), predictor, balancer, RecordingSink(),
                                      AdapterSettings(smoothing=1.0, max_step=256, deadband=1), backend="web",
                                      window_s=2.0, overload=DrainKnobs())
        predictor.rounds = [{"a": 100, "b": 0, "c": 100}]
        controller.step("web")
        weights[mean] = balancer.current["b"]
        assert "busy_mean" not in predictor.requests[0].model_dump()["instances"][0]  # not sent to serving
    # with the mean a and c carry ~42 req/s >= 31 x 1.15: b is drained; by the peak (no mean) only 23: held
    assert weights[0.55] == 0 and weights[0.0] > 0


class Holds:
    """The health controller's holds as the registry would answer them (`lb_adapters.health.RegistryHolds`
    reads the real one: tests/integration/test_health_controller.py)."""

    def __init__(self, shares: dict[str, float] | Exception) -> None:
        self.shares = shares

    def hold_shares(self, service: str) -> dict[str, float]:
        if isinstance(self.shares, Exception):
            raise self.shares
        return dict(self.shares)


def test_a_hold_from_the_health_controller_caps_the_weight_to_its_share_of_the_load() -> None:
    predictor, balancer, record = Predictor(), Balancer(), RecordingSink()
    balancer.current = {"a": 100, "b": 100}
    cfg = AdapterSettings(smoothing=1.0, max_step=256, deadband=1)
    controller = WeightController(Features(), predictor, balancer, record, cfg, backend="web",
                                  holds=Holds({"a": 0.2, "gone": 0.5}))
    predictor.rounds = [{"a": 200, "b": 100}]
    report = controller.step("web")
    assert balancer.current == {"a": 25, "b": 100}  # 25 / (25 + 100): a keeps 20 % of the traffic
    assert "held at 25" in {d.target: d.reason for d in report.decisions}["web/a"]


def test_with_the_holds_unreadable_the_last_read_stand_and_the_round_says_so() -> None:
    predictor, balancer, record = Predictor(), Balancer(), RecordingSink()
    balancer.current = {"a": 100, "b": 100}
    cfg = AdapterSettings(smoothing=1.0, max_step=256, deadband=1)
    holds = Holds({"a": 0.2})
    controller = WeightController(Features(), predictor, balancer, record, cfg, backend="web", holds=holds)
    predictor.rounds = [{"a": 200, "b": 100}, {"a": 220, "b": 100}, {"a": 240, "b": 100}]
    controller.step("web")
    holds.shares = ConnectionError("etcd away")
    report = controller.step("web")
    assert balancer.current == {"a": 25, "b": 100} and "holds unknown (etcd away): the 1 last read" in report.note
    holds.shares = {}  # the hold is over
    controller.step("web")
    assert balancer.current == {"a": 240, "b": 100}
