"""The weight controller loop: features + predictions -> policy -> a balancer, every decision recorded.

All I/O is in the injected objects; the decision itself is `policies.weights.decide_weights`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from infra.core.service_registry import RegistryError
from infra.core.settings import AdapterSettings
from lb_adapters import metrics
from lb_adapters.actuators.base import ActuatorError, WeightActuator
from lb_adapters.features import mean_busy
from lb_adapters.policies.capacity import ALPHA, Served, capacities, guard_load, hold_weight, observe, update_served
from lb_adapters.policies.drain import DrainKnobs
from lb_adapters.policies.weights import OverloadGuard, decide_weights, smooth
from lb_adapters.schemas import Decision, DecisionSink, PredictionRecord
from serving.schemas import InstanceFeatures, WeightsRequest, WeightsResponse

log = logging.getLogger("foresight.adapter")


class FeatureSource(Protocol):
    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]: ...


class WeightPredictor(Protocol):
    def weights(self, request: WeightsRequest) -> WeightsResponse: ...


class HoldSource(Protocol):
    def hold_shares(self, service: str) -> dict[str, float]:
        """Instance -> the share of the load a drain refused for capacity leaves it (the health controller's)."""
        ...


@dataclass
class StepReport:
    features: list[InstanceFeatures] = field(default_factory=list)
    response: WeightsResponse | None = None
    before: dict[str, int] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    after: dict[str, int] = field(default_factory=dict)
    note: str = ""


class WeightController:
    def __init__(self, features: FeatureSource, predictor: WeightPredictor, actuator: WeightActuator,
                 sink: DecisionSink, cfg: AdapterSettings, backend: str,
                 clock: Callable[[], float] = time.time, window_s: float | None = None,
                 overload: DrainKnobs | None = None, holds: HoldSource | None = None) -> None:
        """`window_s`: length of the feature windows (sent with each request: a model trained on
        another length is refused); `overload`: the drain knobs whose capacity guard a predicted 0 passes
        (None: no guard; it needs `window_s` to turn windows into rates); `holds`: where the health
        controller's holds are read (the registry), each round."""
        self.features, self.predictor, self.actuator, self.sink = features, predictor, actuator, sink
        self.cfg, self.backend, self.clock = cfg, backend, clock
        self.window_s, self.overload, self.holds = window_s, overload, holds
        self.aimed: dict[str, dict[str, float]] = {}  # per service: the smoothed weights of the last round
        self.served: dict[str, dict[str, Served]] = {}  # per service: the capacity estimate's averages
        self.known_holds: dict[str, dict[str, float]] = {}  # per service: the holds last read

    def _guard(self, service: str, features: list[InstanceFeatures]) -> OverloadGuard | None:
        if self.overload is None or not self.window_s:
            return None
        self.served[service] = update_served(self.served.get(service, {}),
                                             observe(features, self.window_s, mean_busy(features)), ALPHA)
        return OverloadGuard(capacities(self.served[service], self.overload.min_utilisation),
                             guard_load(sum(f.requests for f in features) / self.window_s, self.served[service]),
                             self.overload.capacity_margin,
                             self.overload.capacity_rps)

    def _held(self, service: str, weights: dict[str, int], report: StepReport) -> dict[str, int]:
        """The most weight each held instance may have: the weight that gives it its share beside the others."""
        if self.holds is None:
            return {}
        try:
            shares = self.known_holds[service] = self.holds.hold_shares(service)
        except (RegistryError, OSError) as exc:  # the registry away: fail-static, the holds last read stand
            shares = self.known_holds.get(service, {})
            report.note = f"holds unknown ({exc}): the {len(shares)} last read stand"
        return {name: hold_weight(share, {n: w for n, w in weights.items() if n != name and n not in shares},
                                  self.cfg.min_weight, HAPROXY_MAX_WEIGHT)
                for name, share in shares.items() if name in weights}

    def step(self, service: str, holds: dict[str, int] | None = None) -> StepReport:
        """`holds`: instance -> the most weight it may have (a drain the health policy refused for capacity);
        None: from the hold source."""
        report = StepReport(features=self.features.for_service(service, self.cfg.features_max_age_s))
        if not report.features:
            report.note = f"no feature windows for {service} in the last {self.cfg.features_max_age_s} s"
            return report
        guard = self._guard(service, report.features)
        report.response = self.predictor.weights(WeightsRequest(service=service, instances=report.features,
                                                                window_s=self.window_s))
        report.before = self.actuator.weights(self.backend)
        raw = {w.instance: w.weight for w in report.response.weights}
        aimed = smooth(raw, self.aimed.get(service, {}), self.cfg.smoothing)
        self.aimed[service] = aimed
        predicted = {name: round(weight) for name, weight in aimed.items()}
        ref = f"{report.response.model}@{report.response.model_version}"
        asked_ms = int(self.clock() * 1000)
        predictions = [PredictionRecord(ts=asked_ms, kind="weights", service=service, instance=w.instance,
                                        model=report.response.model, model_version=report.response.model_version,
                                        value=float(w.weight)) for w in report.response.weights]
        if holds is None:
            holds = self._held(service, report.before, report)
        for change in decide_weights(predicted, report.before, self.cfg, guard, holds):
            reason = change.reason
            if change.instance in raw and raw[change.instance] != predicted[change.instance]:
                reason += f" (smoothed over rounds; this round's prediction {raw[change.instance]})"
            decision = Decision(
                ts=int(self.clock() * 1000), service=service, actuator=self.actuator.name,
                target=f"{self.backend}/{change.instance}", action="set_weight", before=change.before,
                after=change.after, reason=reason, prediction_ref=ref, dry_run=self.cfg.dry_run,
            )
            decision.outcome = "dry_run" if self.cfg.dry_run else self._apply(change.instance, change.after)
            metrics.DECISIONS.labels(self.actuator.name, decision.outcome.split(":")[0]).inc()
            report.decisions.append(decision)
        if report.decisions:  # with the weights they rest on, so each decision's prediction_refs resolve
            self.sink.publish(report.decisions, predictions)
        report.after = self.actuator.weights(self.backend)
        for server, weight in report.after.items():
            metrics.WEIGHT.labels(self.backend, server).set(weight)
        return report

    def _apply(self, server: str, weight: int) -> str:
        try:
            self.actuator.set_weight(self.backend, server, weight)
        except ActuatorError as exc:
            log.warning("weight change failed: %s", exc)
            return f"failed: {exc}"
        return "applied"
