"""The autoscaler loop with the real shared policy and guardrails (infra.core.scaling).

In-process fakes of our own interfaces only, each covered for real elsewhere: `Rates` stands for
ClickHouse `features` (the reader is tested on chDB in test_autoscaler_rates.py), `Forecasts` for
`/v1/forecast` (tests/integration/test_serving_api.py), `FakeScaler` for a scaler (test_scalers.py
and tests/integration/test_autoscale_ray_serve.py), `Recorder` for the DecisionSink (decision log).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from infra.core.features_table import ServiceWindow
from infra.core.scaling import predictive_knobs, reactive_knobs
from infra.core.settings import AutoscaledService, AutoscalerSettings, PoolScalerSettings
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas
from lb_adapters.autoscaler import FALLBACK_REF, Autoscaler, ScaledService
from lb_adapters.predictions import ServingError
from lb_adapters.schemas import Decision, PredictionRecord
from serving.schemas import ForecastRequest, ForecastResponse

T0 = 1_800_000_000.0  # a whole minute
CAPACITY = 10.0
WINDOW_S = 10


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Rates:
    """Fake of ClickHouse `features`: service-wide 10 s windows at a given rate."""

    windows_by_service: dict[str, list[ServiceWindow]] = field(default_factory=dict)
    down: bool = False

    def add(self, service: str, end_s: float, rate: float) -> None:
        end = int(end_s)
        self.windows_by_service.setdefault(service, []).append(
            ServiceWindow(end - WINDOW_S, end, int(rate * WINDOW_S), rate))

    def windows(self, service: str, since_s: int) -> list[ServiceWindow]:
        if self.down:
            raise ConnectionRefusedError("ClickHouse 127.0.0.1:1 refused")
        return [w for w in self.windows_by_service.get(service, []) if w.end_s > since_s]

    def minutes(self, service: str, start_s: int, end_s: int, step_s: int = 60) -> list[tuple[int, int]]:
        sums: dict[int, int] = {}
        for w in self.windows_by_service.get(service, []):
            minute = w.start_s // step_s * step_s
            if start_s <= minute < end_s:
                sums[minute] = sums.get(minute, 0) + w.requests
        return sorted(sums.items())

    def newest(self, services: list[str], since_s: int) -> dict[str, int]:
        if self.down:
            raise ConnectionRefusedError("ClickHouse down")
        return {s: max(w.end_s for w in ws) for s, ws in self.windows_by_service.items() if s in services and ws}


@dataclass
class Forecasts:
    """Fake of `/v1/forecast`: a flat forecast per quantile, or down."""

    levels: tuple[float, ...] = (0.5, 0.9, 0.99)
    values: tuple[float, ...] = (50.0, 60.0, 70.0)
    down: bool = False
    requests: list[ForecastRequest] = field(default_factory=list)

    def forecast(self, request: ForecastRequest) -> ForecastResponse:
        self.requests.append(request)
        if self.down:
            raise ServingError("serving at http://127.0.0.1:1 unreachable: connection refused")
        return ForecastResponse(service=request.service, model="mlp-quantile", model_version="v7",
                                quantiles=list(self.levels), step_s=60, next_minute=request.next_minute,
                                history_source="request", history_minutes=len(request.history or []),
                                forecast=[list(self.values)] * request.horizon)


@dataclass
class FakeScaler:
    """Fake of a scaler: new replicas are ready at once unless `lag` keeps them starting."""

    replicas: int = 2
    ready: int | None = None
    fail: bool = False
    calls: list[int] = field(default_factory=list)
    name: str = "fake"
    target: str = "fake/api"

    def current(self) -> Replicas:
        return Replicas(self.replicas, self.replicas if self.ready is None else self.ready)

    def scale(self, replicas: int) -> None:
        if self.fail:
            raise ActuatorError("pool admin API answered 500")
        self.calls.append(replicas)
        self.replicas = replicas


@dataclass
class Recorder:
    published: list[tuple[list[Decision], list[PredictionRecord]]] = field(default_factory=list)

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        self.published.append((decisions, list(predictions)))

    @property
    def decisions(self) -> list[Decision]:
        return [d for ds, _ in self.published for d in ds]


def make(policy: str = "predictive", **cfg: Any) -> tuple[Autoscaler, Rates, Forecasts, FakeScaler, Recorder, Clock]:
    rates, forecasts, scaler, sink, clock = Rates(), Forecasts(), FakeScaler(), Recorder(), Clock()
    config = AutoscaledService(name="api", scaler=PoolScalerSettings(), policy=policy, capacity_rps=CAPACITY,
                               startup_s=20.0, knobs=predictive_knobs(min_replicas=1, max_replicas=20),
                               reactive=reactive_knobs(target_utilization=1.0))
    auto = Autoscaler([ScaledService(config, scaler)], rates, forecasts, sink,
                      AutoscalerSettings(interval_s=15.0, **cfg), clock=clock)
    return auto, rates, forecasts, scaler, sink, clock


def feed(rates: Rates, clock: Clock, rate: float, minutes: int = 3) -> None:
    """10 s windows (aligned, as the stream worker's) at `rate` from `minutes` whole minutes back to the
    newest window that has closed 2 s before the clock."""
    newest = int(clock.t - 2) // WINDOW_S * WINDOW_S
    for end in range((newest // 60 - minutes) * 60 + WINDOW_S, newest + 1, WINDOW_S):
        rates.add("api", end, rate)


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def shadow_count(sink: Recorder) -> float:
    return next(p.value for p in sink.published[-1][1] if p.kind == "hpa_shadow")


def test_the_shadow_hpa_judges_from_its_own_pool_not_the_acting_one() -> None:
    """HPA's tolerance is relative to its own count: 21 req/s is within 10% of 2 replicas at 10 req/s each,
    so HPA alone holds 2, where judged from the 7 or more the predictive policy runs it would ask for 3."""
    auto, rates, _forecasts, scaler, sink, clock = make()
    feed(rates, clock, 15.0)
    auto.step("api")
    assert scaler.replicas == 7 and shadow_count(sink) == 2
    # 40 req/s: 4 replicas, after its own miss at 21 (21 > 2 x 10): the shadow is HPA, which has no feedback
    # (the fallback's knobs have it: with it the shadow asked for 5)
    assert auto.services["api"].fallback_knobs.feedback_gain > 0
    for rate, alone in ((21.0, 2), (40.0, 4)):
        clock.t += 15
        feed(rates, clock, rate, minutes=1)
        auto.step("api")
        assert scaler.replicas >= 7  # the acting pool stays the predictive policy's
        assert shadow_count(sink) == alone, rate


def test_predictive_round_scales_to_the_forecast_and_records_the_forecast_it_used() -> None:
    auto, rates, forecasts, scaler, sink, clock = make()
    feed(rates, clock, 15.0)
    report = auto.step("api")
    d = report.decision
    assert d is not None and report.fallback is None
    # p99 peak 70 req/s / 10 req/s per replica -> 7, from 2: allowed at once (predictive knobs limit only downs)
    assert scaler.calls == [7] and (d.before, d.after, d.outcome) == (2, 7, "applied")
    assert (d.actuator, d.action, d.target) == ("scaler", "scale", "fake/api")
    assert d.reason.startswith("predictive: p99") and "70.0 req/s" in d.reason and "shadow reactive: 2" in d.reason
    decisions, published = sink.published[-1]
    predictions = [p for p in published if p.kind == "forecast"]
    assert decisions == [d] and predictions
    assert {p.ref() for p in predictions} == {d.prediction_ref}
    shadow = [p for p in published if p.kind == "hpa_shadow"]
    assert [(p.model, p.model_version, p.value) for p in shadow] == [("reactive", "hpa", 2.0)]
    assert {p.quantile for p in predictions} == {0.5, 0.9, 0.99}
    assert all(p.model_version == "v7" and p.kind == "forecast" for p in predictions)
    # the history sent: whole minutes only, ending at the minute the newest window ends in
    sent = forecasts.requests[-1]
    assert sent.next_minute == int(clock.t - 2) // 60 * 60
    assert sent.history == [15.0] * 3
    assert metric("foresight_autoscaler_replicas", service="api", kind="desired") == 7
    assert metric("foresight_autoscaler_fallback_active", service="api") == 0
    assert metric("foresight_autoscaler_forecast_rps", service="api") == 70.0


def test_serving_down_falls_back_to_reactive_labelled_and_never_below_ready_while_load_rises() -> None:
    auto, rates, forecasts, scaler, sink, clock = make()
    scaler.replicas = 8
    feed(rates, clock, 28.0)
    rates.add("api", rates.windows_by_service["api"][-1].end_s + WINDOW_S, 30.0)
    clock.t = rates.windows_by_service["api"][-1].end_s + 2
    forecasts.down = True
    downs, reports = 0, []
    for step in range(26):  # load rising 30 -> 55 req/s (under 8 x 10 req/s) for longer than the 300 s window
        if step:
            clock.t += 15
            rates.add("api", clock.t - 2, 30.0 + step)
        report = auto.step("api")
        assert report.decision is not None and report.fallback is not None
        assert report.fallback.startswith("serving unreachable")
        assert "serving unreachable" in report.decision.reason and "fallback" in report.decision.reason
        assert report.decision.prediction_ref == FALLBACK_REF
        downs += (report.decision.after or 0) < (report.decision.before or 0)
        reports.append(report)
    assert downs == 0 and scaler.replicas == 8 and sink.decisions == [r.decision for r in reports]
    assert any("not below ready while load rises" in r.decision.reason for r in reports)  # type: ignore[union-attr]
    assert metric("foresight_autoscaler_fallback_active", service="api") == 1
    # once load falls and the 300 s stabilization has passed, the same fallback does scale down
    for _ in range(25):
        clock.t += 15
        rates.add("api", clock.t - 2, 20.0)
        auto.step("api")
    assert scaler.replicas < 8


def test_predictions_built_on_stale_features_hand_over_to_the_fallback() -> None:
    auto, rates, _forecasts, _scaler, _sink, clock = make(stale_intervals=2)
    feed(rates, clock, 40.0)
    clock.t += 200  # newest window 202 s old > 2 x 15 s
    report = auto.step("api")
    assert report.fallback is not None and "predictions stale" in report.fallback
    assert report.decision is not None and report.decision.reason.startswith("predictions stale")


def test_clickhouse_down_holds_and_records_the_hold() -> None:
    auto, rates, _forecasts, scaler, sink, clock = make()
    feed(rates, clock, 80.0)
    rates.down = True
    report = auto.step("api")
    assert scaler.calls == []
    d = report.decision
    assert d is not None and d.outcome == "skipped" and d.before == d.after == 2
    assert d.reason.startswith("hold: ClickHouse unreachable")
    assert sink.decisions == [d]


def test_a_failing_scaler_is_recorded_as_failed_and_the_next_round_goes_on() -> None:
    auto, rates, _forecasts, scaler, _sink, clock = make()
    feed(rates, clock, 15.0)
    scaler.fail = True
    report = auto.step("api")
    assert report.decision is not None and report.decision.outcome.startswith("failed: pool admin API answered 500")
    scaler.fail = False
    clock.t += 15
    assert auto.step("api").decision.outcome == "applied"  # type: ignore[union-attr]


def test_dry_run_decides_and_records_without_scaling() -> None:
    auto, rates, _forecasts, scaler, _sink, clock = make(dry_run=True)
    feed(rates, clock, 15.0)
    report = auto.step("api")
    assert scaler.calls == [] and report.decision is not None
    assert (report.decision.outcome, report.decision.dry_run, report.decision.after) == ("dry_run", True, 7)


def test_a_quantile_the_model_does_not_serve_is_replaced_by_the_next_served_one_and_said() -> None:
    auto, rates, forecasts, _scaler, _sink, clock = make()
    forecasts.levels, forecasts.values = (0.1, 0.5, 0.9), (10.0, 30.0, 41.0)  # the baseline's levels
    feed(rates, clock, 15.0)
    report = auto.step("api")
    assert report.decision is not None and report.fallback is None
    assert report.decision.after == math.ceil(41.0 / CAPACITY)
    assert "p99 not served by mlp-quantile@v7, using p90" in report.decision.reason


def test_reactive_policy_service_asks_no_forecast() -> None:
    auto, rates, forecasts, _scaler, _sink, clock = make(policy="reactive")
    feed(rates, clock, 45.0)
    report = auto.step("api")
    assert forecasts.requests == [] and report.fallback is None
    assert report.decision is not None and report.decision.after == 5
    assert report.decision.prediction_ref == FALLBACK_REF


def test_rounds_run_on_each_new_window_and_at_least_every_interval() -> None:
    auto, rates, _forecasts, _scaler, _sink, clock = make()
    last_round: dict[str, float] = {}
    last_seen: dict[str, int] = {}
    feed(rates, clock, 15.0, minutes=1)
    assert auto.due(last_round, last_seen) == ["api"]  # first look
    clock.t += 1
    assert auto.due(last_round, last_seen) == []  # nothing new, interval not up
    rates.add("api", clock.t, 15.0)
    assert auto.due(last_round, last_seen) == ["api"]  # a new window closed
    clock.t += 14
    assert auto.due(last_round, last_seen) == []
    clock.t += 1.5
    assert auto.due(last_round, last_seen) == ["api"]  # interval up


def test_policy_names_are_checked_when_the_loop_is_built() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make(policy="psychic")
