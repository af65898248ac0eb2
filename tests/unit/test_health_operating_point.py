"""The health controller drains where the answering risk model's training chose (`/v1/risk`'s
`operating_point`), counted in its own rounds; `health.drain_at = settings` keeps the settings'.
Fakes of our own interfaces only (feature source, risk answer, registry, sink): no server."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from infra.core.service_registry import HOLD, InstanceRecord, InstanceState, RegistryEntry
from lb_adapters.features import WindowFeatures
from lb_adapters.health import HealthController
from lb_adapters.policies.drain import DrainKnobs
from lb_adapters.schemas import Decision, PredictionRecord
from serving.schemas import InstanceFeatures, InstanceRisk, OperatingPoint, RiskRequest, RiskResponse

NAMES = ("a", "b", "c", "d")


@dataclass
class Features:
    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [InstanceFeatures(instance=n, latency_p99_ms=20.0, requests=10) for n in NAMES]


@dataclass
class Risk:
    """`b` scores 0.75 every round: above the model's point 0.7, below the settings' 0.8."""

    point: OperatingPoint | None

    def risk(self, request: RiskRequest) -> RiskResponse:
        return RiskResponse(service=request.service, model="mlp-risk", model_version="v1",
                            risks=[InstanceRisk(instance=f.instance, risk=0.75 if f.instance == "b" else 0.05,
                                                reasons=[]) for f in request.instances],
                            operating_point=self.point)


@dataclass
class Registry:
    states: dict[str, InstanceState] = field(default_factory=lambda: dict.fromkeys(NAMES, "ready"))
    replacements: list[str] = field(default_factory=list)
    holds: dict[str, float] = field(default_factory=dict)

    def list(self, service: str) -> list[RegistryEntry]:
        return [RegistryEntry(service, n, InstanceRecord(address="127.0.0.1", port=9000 + i, state=s, started_at=0,
                                                         metadata={HOLD: f"{self.holds[n]:g}"} if n in self.holds
                                                         else {}),
                              None, 1) for i, (n, s) in enumerate(self.states.items())]

    def get(self, service: str, instance: str) -> RegistryEntry | None:
        return next((e for e in self.list(service) if e.instance == instance), None)

    def set_hold(self, service: str, instance: str, share: float | None, mod_revision: int,
                 leader: object = None) -> bool:
        if share is None:
            self.holds.pop(instance, None)
        else:
            self.holds[instance] = share
        return True

    def set_state(self, service: str, instance: str, state: InstanceState, mod_revision: int, set_by: str,
                  leader: object = None) -> bool:
        self.states[instance] = state
        return True

    def request_replacement(self, service: str, instance: str, by: str | None, mod_revision: int,
                            leader: object = None) -> bool:
        self.replacements.append(instance)
        return True


@dataclass
class Sink:
    decisions: list[Decision] = field(default_factory=list)

    def publish(self, decisions: list[Decision], predictions: list[PredictionRecord] | None = None) -> None:
        self.decisions += decisions


def rounds_until_drained(point: OperatingPoint | None, model_point: bool = True, rounds: int = 6) -> int | None:
    registry = Registry()
    controller = HealthController(Features(), Risk(point), registry, Sink(),  # type: ignore[arg-type]
                                  DrainKnobs(drain_above=0.8, readmit_below=0.3, max_drained_fraction=0.5),
                                  features_max_age_s=30, window_s=2.0, interval_s=5.0, model_point=model_point)
    for k in range(1, rounds + 1):
        report = controller.step("shop")
        if registry.states["b"] == "draining":
            assert point is None or not model_point or "drain point from the model" in report.note
            return k
    return None


@pytest.mark.parametrize(("point", "model_point", "drained_in"), [
    (OperatingPoint(drain_above=0.7, sustained_s=12.0), True, 3),  # 12 s of windows: 3 rounds of 5 s
    (OperatingPoint(drain_above=0.7, sustained_s=0.0), True, 1),
    (OperatingPoint(drain_above=0.7, sustained_s=12.0), False, None),  # drain_at = settings: 0.75 < 0.8
    (None, True, None),  # no point (the baseline, or an older model): the settings' 0.8
])
def test_the_controller_drains_at_the_models_point_when_told_to(point: OperatingPoint | None, model_point: bool,
                                                                drained_in: int | None) -> None:
    assert rounds_until_drained(point, model_point) == drained_in


@dataclass
class Shop:
    """The demo's `shop` at 31 req/s over 2 s windows: b (faulty) 8 req/s, a 11, c 12, each ~55 % busy on
    average but with a window peak of 1 (4 workers, exponential service times)."""

    mean: float

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [WindowFeatures(instance=n, latency_p99_ms=20.0, requests=2 * rps, busy=1.0, busy_mean=self.mean)
                for n, rps in (("a", 11), ("b", 8), ("c", 12))]


@pytest.mark.parametrize(("mean", "drained"), [(0.55, True), (0.0, False)])
def test_the_overload_guard_reads_the_windows_mean_busy_share(mean: float, drained: bool) -> None:
    """With the mean (a: 11 / 0.55 = 20 req/s, c ~22) the two left carry 31 req/s x 1.15: b is drained.
    A window without a mean (0) falls back to the peak: capacity reads as the served 11 + 12, and the
    drain is refused, as it was in the demo before windows had a mean."""
    registry = Registry(dict.fromkeys("abc", "ready"))
    sink = Sink()
    controller = HealthController(Shop(mean), Risk(None), registry, sink,  # type: ignore[arg-type]
                                  DrainKnobs(drain_above=0.7, readmit_below=0.3, max_drained_fraction=0.5),
                                  features_max_age_s=30, window_s=2.0, interval_s=5.0)
    controller.step("shop")
    assert (registry.states["b"] == "draining") is drained
    decision, *replace = sink.decisions
    assert ("would be overloaded" in decision.reason) is not drained, decision.reason
    # refused for capacity: its replacement is asked for, so that the drain can follow
    # and its share of the load goes to the registry, where the weight adapter caps its weight to it
    assert [d.action for d in replace] == ([] if drained else ["replace", "hold"])
    assert registry.replacements == ([] if drained else ["b"])
    assert (registry.holds == {}) is drained and all(0 < v <= 1 for v in registry.holds.values())
