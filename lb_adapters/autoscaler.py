"""The autoscaler loop: features -> /v1/forecast -> replica policy -> guardrails -> scaler -> decision.

The decision itself is `infra.core.scaling.decide`, the same code the backtest's simulator runs;
everything here is reading, asking, acting and recording. A round runs for a service as soon as a
new closed feature window of it appears (polled every `poll_s`), and at least every `interval_s`.

Fail-static: predictions built on features older than `stale_intervals` intervals, or serving
unreachable, hand the decision to the reactive policy on observed load (`fallback=True`, which
also keeps it from going below the ready count while load rises), and the reason says why.
ClickHouse unreachable: hold (nothing scaled, the hold recorded). The reactive policy also runs
in shadow every round, as Kubernetes' HPA (no feedback); its count goes into the reason and a metric.
The shadow keeps its own pool
on paper (`infra.core.scaling.paper_pool`), started from the real one: HPA alone on the same load,
not HPA's next step from the pool the acting policy built.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from pydantic import ValidationError

from infra.core.features_table import ServiceWindow
from infra.core.scaling import (
    Policy,
    QuantileForecast,
    ScalingContext,
    ScalingDecision,
    ScalingKnobs,
    ScalingState,
    decide,
    policy_by_name,
    reactive,
    ready,
    resize,
)
from infra.core.settings import AutoscaledService, AutoscalerSettings
from lb_adapters import autoscaler_metrics as metrics
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas, Scaler
from lb_adapters.predictions import ServingError
from lb_adapters.schemas import Decision, DecisionSink, PredictionRecord
from serving.schemas import ForecastRequest, ForecastResponse

log = logging.getLogger("foresight.autoscaler")

MINUTE_S = 60
FALLBACK_REF = "reactive@observed"


class RateSource(Protocol):
    """Closed service-wide feature windows of a service (ClickHouse `features`)."""

    def windows(self, service: str, since_s: int) -> list[ServiceWindow]: ...

    def minutes(self, service: str, start_s: int, end_s: int, step_s: int = 60) -> list[tuple[int, int]]: ...

    def newest(self, services: list[str], since_s: int) -> dict[str, int]: ...


class Forecaster(Protocol):
    def forecast(self, request: ForecastRequest) -> ForecastResponse: ...


@dataclass
class ScaledService:
    """A configured service with its scaler built."""

    config: AutoscaledService
    scaler: Scaler

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def fallback_knobs(self) -> ScalingKnobs:
        """The reactive knobs, with the service's bounds (min/max, max_unavailable) from its own knobs."""
        k = self.config.knobs
        return self.config.reactive.model_copy(update={"min_replicas": k.min_replicas, "max_replicas": k.max_replicas,
                                                       "max_unavailable": k.max_unavailable})

    @property
    def shadow_knobs(self) -> ScalingKnobs:
        """The fallback's knobs without the feedback: the shadow answers what Kubernetes' HPA would have done,
        and HPA does not raise its headroom after misses (left in, it made the shadow a costlier, safer HPA)."""
        return self.fallback_knobs.model_copy(update={"feedback_gain": 0.0})


@dataclass
class Memory:
    """What a service's loop carries between rounds (in memory; a restart starts afresh)."""

    state: ScalingState = field(default_factory=ScalingState)
    shadow: ScalingState = field(default_factory=ScalingState)
    shadow_pool: list[float] | None = None  # when each of the shadow's own instances is ready
    last_window_end: int = 0


@dataclass
class RoundReport:
    service: str
    decision: Decision | None = None
    predictions: list[PredictionRecord] = field(default_factory=list)
    fallback: str | None = None  # why the fallback decided, None when the service's own policy did
    shadow: int | None = None
    newest_window_end: int | None = None  # end (epoch s) of the newest feature window the round read
    applied_at: float | None = None  # clock when the scaler accepted the change
    took_s: float = 0.0  # the round's own time (read, forecast, decide, act, record)
    note: str = ""


class Autoscaler:
    def __init__(self, services: Sequence[ScaledService], rates: RateSource, forecaster: Forecaster,
                 sink: DecisionSink, cfg: AutoscalerSettings, clock: Callable[[], float] = time.time,
                 is_leader: Callable[[str], bool] = lambda _service: True) -> None:
        self.services = {s.name: s for s in services}
        self.policies: dict[str, Policy] = {s.name: policy_by_name(s.config.policy) for s in services}
        self.rates, self.forecaster, self.sink, self.cfg = rates, forecaster, sink, cfg
        self.clock, self.is_leader = clock, is_leader
        self.memory = {s.name: Memory() for s in services}

    # -- one round -----------------------------------------------------------------------------

    def step(self, service: str) -> RoundReport:
        started = time.perf_counter()
        report = self._step(self.services[service], self.memory[service])
        report.took_s = time.perf_counter() - started
        metrics.ROUND_SECONDS.observe(report.took_s)
        return report

    def _step(self, svc: ScaledService, mem: Memory) -> RoundReport:
        report = RoundReport(svc.name)
        if not self.is_leader(svc.name):
            metrics.LEADER.labels(svc.name).set(0)
            report.note = "standing by: another copy leads this service, or etcd is unreachable"
            return report
        metrics.LEADER.labels(svc.name).set(1)
        now = self.clock()
        interval = self.cfg.interval_s
        stale_s = self.cfg.stale_intervals * interval
        lookback_s = max(2 * stale_s, 5 * MINUTE_S)  # windows read for the observed rate and staleness
        try:
            windows = self.rates.windows(svc.name, int(now - lookback_s))
            hist_end = (max(w.end_s for w in windows) // MINUTE_S) * MINUTE_S if windows else None
            minutes = (self.rates.minutes(svc.name, hist_end - self.cfg.history_minutes * MINUTE_S, hist_end)
                       if hist_end is not None else [])
        except Exception as exc:  # any ClickHouse failure: no load known, so nothing may change
            return self._hold(svc, report, now, f"hold: ClickHouse unreachable or failing ({exc})",
                              self._replicas(svc))
        try:
            replicas = svc.scaler.current()
        except ActuatorError as exc:
            return self._hold(svc, report, now, f"hold: scaler unreadable ({exc})", None)

        first_round = mem.last_window_end == 0
        observed, newest_end = self._observed(windows, mem)
        if first_round:
            mem.state = self._seed(mem.state, now, replicas, windows)
        report.newest_window_end = newest_end
        fallback: str | None = None
        forecast: QuantileForecast | None = None
        knobs = svc.config.knobs
        policy = self.policies[svc.name]
        quantile_note = ""
        predictive = svc.config.policy == "predictive"
        if predictive:
            if newest_end is None or now - newest_end > stale_s:
                age = (f"no feature window in the last {lookback_s:.0f} s" if newest_end is None
                       else f"features end {now - newest_end:.0f} s ago")
                fallback = f"predictions stale ({age}, > {self.cfg.stale_intervals} intervals of {interval:g} s)"
            else:
                assert hist_end is not None
                forecast, report.predictions, knobs, quantile_note, fallback = self._forecast(
                    svc, now, hist_end, minutes, knobs)
        if fallback is not None:
            policy, knobs = reactive, svc.fallback_knobs
            report.fallback = fallback
        ctx = ScalingContext(now_s=now, interval_s=interval, startup_s=svc.config.startup_s,
                             capacity=svc.config.capacity_rps, current=replicas.current, ready=replicas.ready,
                             observed_rate=observed, forecast=forecast, knobs=knobs, state=mem.state,
                             fallback=fallback is not None)
        decision = decide(policy, ctx)
        if mem.shadow_pool is None:  # HPA alone starts from the pool as it is
            mem.shadow_pool = resize([-math.inf] * replicas.ready, replicas.current, now, svc.config.startup_s)
        shadow = decide(reactive, replace(ctx, knobs=svc.shadow_knobs, state=mem.shadow, fallback=False,
                                          current=len(mem.shadow_pool), ready=ready(mem.shadow_pool, now)))
        mem.state, mem.shadow = decision.state, shadow.state
        mem.shadow_pool = resize(mem.shadow_pool, shadow.desired, now, svc.config.startup_s)
        report.shadow = shadow.desired
        reason = self._reason(decision, fallback, quantile_note, shadow.desired)
        ref = report.predictions[0].ref() if report.predictions else FALLBACK_REF
        # The shadow's count is a counterfactual, recorded beside the forecast (the dashboard draws it).
        report.predictions.append(PredictionRecord(ts=int(now * 1000), kind="hpa_shadow", service=svc.name,
                                                   model="reactive", model_version="hpa", value=shadow.desired))
        report.decision = self._act(svc, report, now, replicas, decision.desired, reason, ref)
        self._publish(report)
        self._gauges(svc.name, replicas, decision.desired, shadow.desired, observed, forecast, knobs, ctx,
                     fallback is not None)
        return report

    def _observed(self, windows: list[ServiceWindow], mem: Memory) -> tuple[float | None, int | None]:
        """Mean rate of the windows closed since the last round (the newest one on a first round or when
        none closed since), and the newest end."""
        if not windows:
            return None, None
        newest_end = max(w.end_s for w in windows)
        newest = max(windows, key=lambda w: w.end_s)
        fresh = [w for w in windows if w.end_s > mem.last_window_end] if mem.last_window_end else [newest]
        fresh = fresh or [newest]
        mem.last_window_end = newest_end
        seconds = sum(w.end_s - w.start_s for w in fresh)
        rate = (sum(w.requests for w in fresh) / seconds) if seconds > 0 else fresh[-1].rate
        return rate, newest_end

    @staticmethod
    def _seed(state: ScalingState, now: float, replicas: Replicas, windows: list[ServiceWindow]) -> ScalingState:
        """A (re)started loop knows no history: take the current count as just recommended (so the
        stabilization window holds it, no scale-down right after a restart) and the window before the
        newest as the previous load (so "rising" is known from the first round)."""
        ordered = sorted(windows, key=lambda w: w.end_s)
        previous = ordered[-2].rate if len(ordered) >= 2 else state.last_observed
        return replace(state, recommendations=state.recommendations or ((now, replicas.current),),
                       last_observed=state.last_observed if state.last_observed is not None else previous)

    def _forecast(self, svc: ScaledService, now: float, hist_end: int, minutes: list[tuple[int, int]],
                  knobs: ScalingKnobs) -> tuple[QuantileForecast | None, list[PredictionRecord], ScalingKnobs, str,
                                                str | None]:
        """Ask serving; (forecast, its records, knobs with a served quantile, a note, why the fallback decides)."""
        span = svc.config.startup_s + self.cfg.interval_s
        by_minute = {m: n for m, n in minutes}
        start = hist_end - self.cfg.history_minutes * MINUTE_S
        history: list[float | None] = [by_minute[m] / MINUTE_S if m in by_minute else None
                                       for m in range(start, hist_end, MINUTE_S)]
        while history and history[0] is None:
            history.pop(0)
        if not history:
            return None, [], knobs, "", "predictions unavailable (no whole minute of history yet)"
        horizon = max(1, math.ceil((now + span - hist_end) / MINUTE_S))
        try:
            resp = self.forecaster.forecast(ForecastRequest(service=svc.name, history=history,
                                                            next_minute=float(hist_end), horizon=horizon))
        except ServingError as exc:  # down, or refusing: the fallback decides
            return None, [], knobs, "", f"serving unreachable ({exc})"
        except (ValidationError, ValueError) as exc:  # an answer that does not parse as a forecast
            return None, [], knobs, "", f"serving answer unusable ({exc})"
        levels = tuple(resp.quantiles)
        note = ""
        if knobs.quantile not in levels:
            served = min((q for q in levels if q >= knobs.quantile), default=max(levels))
            note = f"p{knobs.quantile * 100:g} not served by {resp.model}@{resp.model_version}, using p{served * 100:g}"
            knobs = knobs.model_copy(update={"quantile": served})
        start_s = float(hist_end) if resp.next_minute is None else resp.next_minute
        forecast = QuantileForecast(start_s=start_s, step_s=float(resp.step_s), levels=levels,
                                    values=np.asarray(resp.forecast, dtype=float).reshape(len(resp.forecast),
                                                                                           len(levels)))
        if forecast.peak(knobs.quantile, now, now + span) is None:
            return None, [], knobs, note, (f"predictions do not cover the next {span:.0f} s "
                                           f"({len(resp.forecast)} steps from {start_s:.0f})")
        records = [
            PredictionRecord(ts=int(now * 1000), kind="forecast", service=svc.name, model=resp.model,
                             model_version=resp.model_version, horizon_s=max(0, int(step_start - now)),
                             quantile=q, value=float(row[j]))
            for k, row in enumerate(forecast.values)
            if (step_start := start_s + k * forecast.step_s) + forecast.step_s > now and step_start < now + span
            for j, q in enumerate(levels)
        ]
        return forecast, records, knobs, note, None

    @staticmethod
    def _reason(decision: ScalingDecision, fallback: str | None, note: str, shadow: int) -> str:
        parts = [f"{fallback}: {decision.reason}" if fallback else decision.reason]
        if note:
            parts.append(note)
        parts.append(f"shadow reactive: {shadow}")
        return "; ".join(parts)

    def _act(self, svc: ScaledService, report: RoundReport, now: float, replicas: Replicas, desired: int,
             reason: str, ref: str) -> Decision:
        if desired == replicas.current:
            outcome = "skipped"
        elif self.cfg.dry_run:
            outcome = "dry_run"
        else:
            try:
                svc.scaler.scale(desired)
            except ActuatorError as exc:
                log.warning("%s: scaling to %d failed: %s", svc.name, desired, exc)
                outcome = f"failed: {exc}"
            else:
                outcome = "applied"
                report.applied_at = self.clock()
        metrics.DECISIONS.labels(svc.name, outcome.split(":")[0]).inc()
        return Decision(ts=int(now * 1000), service=svc.name, actuator="scaler", target=svc.scaler.target,
                        action="scale", before=replicas.current, after=desired, reason=reason, prediction_ref=ref,
                        dry_run=self.cfg.dry_run, outcome=outcome)

    def _hold(self, svc: ScaledService, report: RoundReport, now: float, reason: str,
              replicas: Replicas | None) -> RoundReport:
        """Record that nothing changes (`replicas` as the scaler reported them, None when it did not answer)."""
        before = None if replicas is None else replicas.current
        metrics.DECISIONS.labels(svc.name, "hold").inc()
        report.note = reason
        report.decision = Decision(ts=int(now * 1000), service=svc.name, actuator="scaler", target=svc.scaler.target,
                                   action="scale", before=before, after=before,
                                   reason=reason, prediction_ref="none", dry_run=self.cfg.dry_run, outcome="skipped")
        self._publish(report)
        return report

    @staticmethod
    def _replicas(svc: ScaledService) -> Replicas | None:
        try:
            return svc.scaler.current()
        except ActuatorError:
            return None

    def _publish(self, report: RoundReport) -> None:
        if report.decision is None:
            return
        try:
            self.sink.publish([report.decision], report.predictions)
        except Exception as exc:  # the decision was made (and maybe applied); losing its record must not stop us
            log.error("%s: decision not recorded: %s", report.service, exc)
            report.note = f"decision not recorded: {exc}"

    @staticmethod
    def _gauges(service: str, replicas: Replicas, desired: int, shadow: int, observed: float | None,
                forecast: QuantileForecast | None, knobs: ScalingKnobs, ctx: ScalingContext, fallback: bool) -> None:
        for kind, value in (("desired", desired), ("current", replicas.current), ("ready", replicas.ready),
                            ("shadow_reactive", shadow)):
            metrics.REPLICAS.labels(service, kind).set(value)
        peak = None if forecast is None else forecast.peak(knobs.quantile, ctx.now_s,
                                                           ctx.now_s + ctx.startup_s + ctx.interval_s)
        metrics.FORECAST.labels(service).set(math.nan if peak is None else peak)
        metrics.OBSERVED.labels(service).set(math.nan if observed is None else observed)
        metrics.FALLBACK.labels(service).set(1 if fallback else 0)

    # -- the loop ------------------------------------------------------------------------------

    def due(self, last_round: dict[str, float], last_seen: dict[str, int]) -> list[str]:
        """Services with a feature window newer than their last round's, or whose interval is up."""
        now = self.clock()
        names = list(self.services)
        try:
            newest = self.rates.newest(names, int(now - 3600))
        except Exception as exc:  # ClickHouse down: the interval still triggers rounds, which hold
            log.debug("polling feature windows failed: %s", exc)
            newest = {}
        due = []
        for name in names:
            end = newest.get(name, 0)
            if end > last_seen.get(name, 0) or now - last_round.get(name, -math.inf) >= self.cfg.interval_s:
                last_seen[name] = max(end, last_seen.get(name, 0))
                last_round[name] = now
                due.append(name)
        return due

    def run(self, stop: threading.Event, on_round: Callable[[RoundReport], None] = lambda _r: None) -> None:
        """Decide until `stop` is set; a failed round is logged and counted, the loop goes on."""
        last_round: dict[str, float] = {}
        last_seen: dict[str, int] = {}
        while not stop.is_set():
            for name in self.due(last_round, last_seen):
                try:
                    report = self.step(name)
                except Exception:
                    log.exception("%s: round failed", name)
                    metrics.DECISIONS.labels(name, "error").inc()
                    continue
                on_round(report)
            stop.wait(self.cfg.poll_s)
