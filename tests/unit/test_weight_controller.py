"""The weight controller's round with in-memory stand-ins for its I/O (features, serving, HAProxy, the
record): what it aims at, what it applies and what it records. The real ones are in
tests/integration/test_adapt_round_errors.py and test_bench_lb.py."""

from __future__ import annotations

from collections.abc import Sequence

from infra.core.settings import AdapterSettings
from lb_adapters.controller import WeightController
from lb_adapters.schemas import Decision, PredictionRecord
from serving.schemas import InstanceFeatures, InstanceWeight, WeightsRequest, WeightsResponse


class Features:
    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [InstanceFeatures(instance=i, latency_p99_ms=10.0) for i in ("a", "b")]


class Predictor:
    def __init__(self) -> None:
        self.rounds: list[dict[str, int]] = []

    def weights(self, request: WeightsRequest) -> WeightsResponse:
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


class Record:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.predictions: list[PredictionRecord] = []

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        self.decisions += decisions
        self.predictions += predictions


def test_rounds_aim_at_smoothed_predictions_and_record_the_raw_ones() -> None:
    predictor, balancer, record = Predictor(), Balancer(), Record()
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
