"""The health controller: drain an instance before it fails, re-admit it once it is healthy again.

Every round, per service: the latest feature window of each instance -> `/v1/risk` (a served model,
or the peer-deviation baseline, named in the answer) -> the drain policy (pure, guardrails inside)
-> the registry (a compare-and-set of the instance's state; the balancer sync carries it to HAProxy
and nginx) -> a Decision per change, with the risk scores it acted on. Fail-static: with serving or
the registry unreachable it changes nothing and says why.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from infra.core.service_registry import REPLACE, InstanceState, Leadership, Registry, RegistryEntry, RegistryError
from lb_adapters import metrics
from lb_adapters.controller import FeatureSource
from lb_adapters.features import mean_busy
from lb_adapters.policies.capacity import ALPHA, Served, capacities, guard_load, observe, update_served
from lb_adapters.policies.drain import DrainDecision, DrainKnobs, DrainState, decide_drains
from lb_adapters.predictions import ServingError
from lb_adapters.schemas import Decision, DecisionSink, PredictionRecord
from serving.schemas import OperatingPoint, RiskRequest, RiskResponse

log = logging.getLogger("foresight.health")


class RiskPredictor(Protocol):
    def risk(self, request: RiskRequest) -> RiskResponse: ...


@dataclass
class HealthReport:
    service: str
    risk: dict[str, float | None] = field(default_factory=dict)
    model: str = ""
    decisions: list[Decision] = field(default_factory=list)
    note: str = ""


def at_operating_point(knobs: DrainKnobs, op: OperatingPoint, interval_s: float) -> tuple[DrainKnobs, str]:
    """`knobs` draining where the answering model's training chose: its threshold, held for as many rounds
    as cover its seconds of consecutive windows. A point that would cross the re-admission threshold (no
    hysteresis left) is not taken, and the note says so."""
    if op.drain_above <= knobs.readmit_below:
        return knobs, (f"the model's drain point {op.drain_above:g} is not above readmit_below "
                       f"{knobs.readmit_below:g}: draining at the settings' {knobs.drain_above:g}")
    rounds = max(1, math.ceil(op.sustained_s / interval_s - 1e-9))
    return (replace(knobs, drain_above=op.drain_above, drain_after=rounds),
            f"drain point from the model: risk >= {op.drain_above:g} for {rounds} round(s) ({op.sustained_s:g} s)")


class RegistryHolds:
    """The holds `HealthController` writes, read back for the weight adapter (`WeightController(holds=...)`)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def hold_shares(self, service: str) -> dict[str, float]:
        return {e.instance: share for e in self.registry.list(service)
                if e.record is not None and e.record.state == "ready" and (share := e.record.hold_share) is not None}


HOLD_STEP = 0.05  # a hold's share moves with the load each round; the registry is written when a step is crossed


def hold_step(share: float) -> float:
    """`share` rounded up to a `HOLD_STEP`: never less than the others cannot take."""
    return round(min(1.0, math.ceil(share / HOLD_STEP - 1e-9) * HOLD_STEP), 2)  # as the registry stores it


class HealthController:
    def __init__(self, features: FeatureSource, predictor: RiskPredictor, registry: Registry, sink: DecisionSink,
                 knobs: DrainKnobs, features_max_age_s: int, window_s: float = 10.0, dry_run: bool = False,
                 interval_s: float = 5.0, model_point: bool = True,
                 leadership: Callable[[str], Leadership | None] = lambda _service: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.features, self.predictor, self.registry, self.sink = features, predictor, registry, sink
        self.knobs, self.max_age_s, self.dry_run, self.clock = knobs, features_max_age_s, dry_run, clock
        self.window_s = window_s  # of the per-instance windows the feature source reads (the load estimate)
        self.leadership = leadership
        self.interval_s, self.model_point = interval_s, model_point  # rounds' period; drain at the model's point
        self.state: dict[str, DrainState] = {}
        self.served: dict[str, dict[str, Served]] = {}  # per service: the capacity estimate's averages

    def step(self, service: str) -> HealthReport:
        report = HealthReport(service)
        leader = self.leadership(service)
        if leader is not None and not leader.is_leader:
            report.note = f"standing by: {leader.current_holder_text()} leads {service}"
            return report
        try:
            entries = self.registry.list(service)
        except RegistryError as exc:
            report.note = f"registry unreachable ({exc}): holding every instance as it is"
            return report
        records = {e.instance: e for e in entries if e.record is not None}
        if not records:
            report.note = f"no instance of {service} in the registry"
            return report
        windows = self.features.for_service(service, self.max_age_s)
        report.risk = dict.fromkeys(records, None)  # no recent window: unknown, not healthy
        scored: RiskResponse | None = None
        if windows:
            try:
                scored = self.predictor.risk(RiskRequest(service=service, instances=windows, window_s=self.window_s))
            except ServingError as exc:
                report.note = f"risk unavailable ({exc}): holding every instance as it is"
                return report
            report.model = f"{scored.model}@{scored.model_version}"
            report.risk.update({r.instance: r.risk for r in scored.risks if r.instance in records})
            if scored.note:
                report.note = scored.note
        self.served[service] = update_served(self.served.get(service, {}),
                                             observe(windows, self.window_s, mean_busy(windows)), ALPHA)
        knobs = self.knobs
        if self.model_point and scored is not None and scored.operating_point is not None:
            knobs, said = at_operating_point(self.knobs, scored.operating_point, self.interval_s)
            report.note = "; ".join(n for n in (report.note, said) if n)
        decisions, self.state[service] = decide_drains(
            report.risk, {n: e.record for n, e in records.items() if e.record is not None},
            self.state.get(service, DrainState()), knobs,
            load_rps=guard_load(sum(w.requests for w in windows) / self.window_s if windows else None,
                                self.served[service]),
            capacity=capacities(self.served[service], self.knobs.min_utilisation))
        now_ms = int(self.clock() * 1000)
        predictions = [PredictionRecord(ts=now_ms, kind="risk", service=service, instance=n, model=scored.model,
                                        model_version=scored.model_version, value=r)
                       for n, r in report.risk.items() if r is not None] if scored else []
        refs = {p.instance: p.ref() for p in predictions}
        for d in decisions:
            report.decisions.append(self._act(service, records[d.instance], d, now_ms, refs.get(d.instance, ""),
                                               leader))
        report.decisions += self._replacements(service, records, decisions, report.risk, knobs, now_ms, refs, leader)
        report.decisions += self._holds(service, records, decisions, now_ms, refs, leader)
        if report.decisions:
            self.sink.publish(report.decisions, [p for p in predictions if p.instance in
                                                 {d.instance for d in decisions}])
        return report

    def _replacements(self, service: str, records: dict[str, RegistryEntry], decisions: list[DrainDecision],
                      risk: dict[str, float | None], knobs: DrainKnobs, now_ms: int, refs: dict[str, str],
                      leader: Leadership | None) -> list[Decision]:
        """A drain refused for capacity asks for the instance's replacement (the pool starts one and stops
        counting it), so that the drain can follow once it is ready; the mark is withdrawn when the instance
        is healthy again before that (back at `readmit_below`). Surge, then drain: an instance at risk on a
        service with no spare capacity is not left to fail in service."""
        refused = {d.instance: d for d in decisions if d.action in ("refuse", "hold") and d.hold_share is not None}
        out = []
        for name, entry in sorted(records.items()):
            rec = entry.record
            if rec is None or rec.state != "ready":
                continue
            r = risk.get(name)
            if name in refused and not rec.replacement_requested:
                by: str | None = "controller"
                why = f"{refused[name].reason}: a replacement is started so that the drain can follow"
            elif (rec.replacement_requested and rec.metadata.get(REPLACE) == "controller" and name not in refused
                  and r is not None and r <= knobs.readmit_below):
                by, why = None, f"risk {r:.2f} <= {knobs.readmit_below:g}: the replacement is no longer needed"
            else:
                continue
            decision = Decision(ts=now_ms, service=service, actuator="etcd", target=f"{service}/{name}",
                                action="replace" if by else "keep", before=None, after=None, reason=why,
                                prediction_ref=refs.get(name, ""), dry_run=self.dry_run)
            self._apply(decision, partial(self.registry.request_replacement, service, name, by, entry.mod_revision,
                                          leader))
            out.append(decision)
        return out

    def _holds(self, service: str, records: dict[str, RegistryEntry], decisions: list[DrainDecision], now_ms: int,
               refs: dict[str, str], leader: Leadership | None) -> list[Decision]:
        """Each hold's share of the load into the registry (`hold_share`, in steps of `HOLD_STEP`, rounded up),
        where the weight adapter caps the instance's weight to it; lifted once the hold is over (a drain or
        a state change lifts it too)."""
        want = {d.instance: hold_step(d.hold_share) for d in decisions
                if d.action in ("refuse", "hold") and d.hold_share is not None}
        moved = {d.instance for d in decisions if d.action in ("drain", "readmit")}  # its state change lifts it
        out = []
        for name, entry in sorted(records.items()):
            rec = entry.record
            if rec is None or rec.state != "ready" or name in moved or want.get(name) == rec.hold_share:
                continue
            share = want.get(name)
            why = (f"held at {share:.0%} of the load: a drain refused because the others cannot carry it"
                   if share is not None else "the hold is over: the weight is the model's again")
            decision = Decision(ts=now_ms, service=service, actuator="etcd", target=f"{service}/{name}",
                                action="hold", before=rec.hold_share, after=share, reason=why,
                                prediction_ref=refs.get(name, ""), dry_run=self.dry_run)
            out.append(self._apply(decision, partial(self._set_hold, service, name, share, leader)))
        return out

    def _set_hold(self, service: str, name: str, share: float | None, leader: Leadership | None) -> bool:
        entry = self.registry.get(service, name)  # read again: a replacement mark may have moved it this round
        return entry is not None and self.registry.set_hold(service, name, share, entry.mod_revision, leader)

    def _act(self, service: str, entry: RegistryEntry, d: DrainDecision, now_ms: int, ref: str,
             leader: Leadership | None) -> Decision:
        before: InstanceState = entry.record.state if entry.record else "ready"
        after: InstanceState = {"drain": "draining", "readmit": "ready"}.get(d.action, before)  # type: ignore[assignment]
        # a hold is a drain refused for capacity, still in force: audited as one (its share: `_holds`)
        decision = Decision(ts=now_ms, service=service, actuator="etcd", target=f"{service}/{d.instance}",
                            action="undrain" if d.action == "readmit" else "drain",
                            before=None, after=None, reason=f"{before} -> {after}: {d.reason}",
                            prediction_ref=ref, dry_run=self.dry_run)
        if d.action in ("refuse", "hold"):
            decision.outcome = "skipped: guardrail"
            return self._record(decision)
        return self._apply(decision, lambda: self.registry.set_state(service, d.instance, after, entry.mod_revision,
                                                                     set_by="controller", leader=leader))

    def _apply(self, decision: Decision, change: Callable[[], bool]) -> Decision:
        """Carry out `decision`'s compare-and-set in the registry (not in a dry run) and record the outcome."""
        if self.dry_run:
            decision.outcome = "dry_run"
        else:
            try:
                done = change()
            except (RegistryError, ValueError) as exc:
                decision.outcome = f"failed: {exc}"
            else:
                decision.outcome = "applied" if done else "skipped: the instance changed meanwhile; next round"
        return self._record(decision)

    @staticmethod
    def _record(decision: Decision) -> Decision:
        metrics.DECISIONS.labels("etcd", decision.outcome.split(":")[0]).inc()
        log.info("%s %s: %s (%s)", decision.action, decision.target, decision.outcome, decision.reason)
        return decision
