"""`foresight demo`: the whole loop on real traffic, as a person would watch it.

The stack and its pool come up; a slice of the NASA trace with a morning ramp is replayed,
time-compressed, as real requests through HAProxy to the pool's demo service; the autoscaler
scales it predictively (the reactive HPA-style policy in shadow) and the health controller drains
instances at risk, while one instance is given a leak that ends in a crash. At the end: a summary
(under-provisioned seconds and replica-seconds beside the shadow HPA and the oracle, client p99 and
errors, how long before the crash the faulty instance was drained, decisions) and an HTML report.

The autoscaler runs on the trace's clock and units (`infra.trace_time`), asking a forecaster trained
on the trace before the slice (`infra.demo_forecaster`), so both replica policies run as an operator
would configure them on the real service. The comparison with HPA is counterfactual and like for like:
both policies decide every round on the same inputs (the HPA in shadow, its counts recorded), and both
schedules of counts are applied second by second with the service's startup delay against the
recorded demand (`replay_schedule`). What was measured (ready instances against the observed load
each window) is reported beside it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, Field

from infra.client_errors import error_onset_ms
from infra.core.contracts import SERVICE_WIDE
from infra.core.datasets import NASA_RPS, dataset_path
from infra.core.db import client as clickhouse_client
from infra.core.features_table import recent_service_windows
from infra.core.scaling import hpa_knobs, reactive_knobs, replay_schedule
from infra.core.settings import (
    AutoscaledService,
    AutoscalerSettings,
    HealthSettings,
    PoolScalerSettings,
    PoolServiceSettings,
    Settings,
)
from infra.demo_forecaster import demo_horizon_min, ensure_forecaster, minute_at
from infra.hpa_whatif import HPA_TARGETS, cheapest_at_least_as_safe, simulate_reactive
from infra.informed_bound import fit_headroom, informed_counts, informed_schedule
from infra.trace_time import TraceTime, TraceTimeRates, WallTimeSink
from infra.workers import build_health_controller, build_scaler, decision_log
from ingest.replay import REQUEST_TIMEOUT_S, ReplaySummary, replay
from lb_adapters.autoscaler import Autoscaler, ScaledService
from lb_adapters.predictions import ForecastClient
from lb_adapters.rates import ClickHouseRates
from training.series import RateSeries, load_trace

Say = Callable[[str], None]
SMOOTH_MIN = 60  # the informed policy is told the coming hour's mean (centred, in trace minutes)


class LoopSummary(BaseModel):
    """The demo's result; `--json` prints it as the last line."""

    wall_s: float
    underprov_s: dict[str, float | None]
    replica_seconds: dict[str, float | None]
    client_p99_ms: float | None
    client_error_pct: float
    drain_lead_s: float | None
    decisions: int
    drain_before_errors_s: float | None = Field(
        None, description="Seconds from the faulty instance's drain to the first request of it that failed for "
        "its client (5xx, or slower than the client waits) where those passed 1 % (`infra.client_errors`); "
        "negative: drained after; None: not drained, or its clients saw no such errors")
    report: str
    notes: list[str]
    hpa_whatif: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="HPA target utilisation -> {replica_seconds, underprov_s}: the reactive "
        "policy run again offline on the recorded load at lower targets (`infra.hpa_whatif`)")
    hpa_at_predictive_slo: str | None = Field(None, description="The cheapest of those targets under-provisioned "
                                               "no longer than the predictive policy; None: none was")
    slo_allowed_s: float | None = Field(None, description="Seconds of the demo a policy may be under-provisioned "
                                        "and meet its SLO (the predictive policy's `slo` share of `wall_s`)")
    checks: dict[str, bool | None] = Field(
        default_factory=dict, description="What the demo is meant to show, read from the figures above "
        "(`demo_checks`): each policy within its SLO, predictive cheaper than the shadow HPA, both at once, and "
        "the faulty instance drained before it failed; None: not known (no fault, or not drained)")


def demo_checks(underprov_s: Mapping[str, float | None], replica_seconds: Mapping[str, float | None], allowed_s: float,
                drain_lead_s: float | None, fault_injected: bool,
                drain_before_errors_s: float | None = None) -> dict[str, bool | None]:
    """The demo's claims as yes/no from its figures, so a reader (or a script) need not do the arithmetic.
    `predictive_meets_slo_cheaper_than_hpa` is the headline: both halves on the same run. The faulty instance
    failed at its crash, or earlier at its clients' error onset when it had one (`drain_before_errors_s`)."""
    def within(key: str) -> bool | None:
        under = underprov_s.get(key)
        return None if under is None else under <= allowed_s + 1e-9

    pred_rs, hpa_rs = replica_seconds.get("predictive"), replica_seconds.get("hpa_shadow")
    cheaper = None if pred_rs is None or hpa_rs is None else pred_rs < hpa_rs
    meets = within("predictive")
    return {
        "predictive_within_slo": meets,
        "hpa_shadow_within_slo": within("hpa_shadow"),
        "predictive_cheaper_than_hpa_shadow": cheaper,
        "predictive_meets_slo_cheaper_than_hpa": None if meets is None or cheaper is None else meets and cheaper,
        "drained_before_failure": (None if not fault_injected or drain_lead_s is None else drain_lead_s > 0
                                   and (drain_before_errors_s is None or drain_before_errors_s > 0)),
    }


@dataclass
class Timeline:
    """What the demo saw each second: the pool's instances, and the autoscaler's and health rounds."""

    pool: list[tuple[float, int, int]] = field(default_factory=list)  # (t, current, ready)
    desired: list[tuple[float, int]] = field(default_factory=list)
    shadow: list[tuple[float, int]] = field(default_factory=list)
    drains: list[tuple[float, str, str]] = field(default_factory=list)  # (t, instance, outcome)
    fault: tuple[float, str] | None = None  # (t injected, instance)
    trace: TraceTime | None = None  # the autoscaler's clock
    informed: list[tuple[float, int]] = field(default_factory=list)  # `infra.informed_bound`'s schedule
    lock: threading.Lock = field(default_factory=threading.Lock)


def demo_settings(s: Settings, svc: PoolServiceSettings) -> Settings:
    """The stack's settings with the demo's own health controller for `svc`, on the wall clock."""
    return s.model_copy(update={
        # `health.capacity_rps` (one capacity for every instance) stays unset: with it set, the leaking
        # instance was drained 30 s later (9.4 s before its crash, 0.78% errors) because the pool had just
        # scaled down to two; unset, 39.5 s before, 0 errors. The drain guard still judges from each
        # instance's own capacity, estimated from its busy gauge (`lb_adapters.policies.capacity`); the
        # figures above predate that estimate.
        "health": HealthSettings(services=[svc.name], interval_s=s.demo.interval_s, features_max_age_s=30,
                                 cooldown_rounds=int(120 / s.demo.interval_s)),
    })


def history_window_s(s: Settings) -> int:
    """Wall seconds of one trace minute in the replay: the length of the history windows written (whole
    seconds, as `features` stores them)."""
    minute = 60.0 / s.demo.speedup
    if minute < 1 or minute != round(minute):
        raise ValueError(f"demo.speedup {s.demo.speedup:g} makes a trace minute {minute:g} wall seconds; choose a "
                         "speedup that divides 60 (e.g. 60, 30, 20, 12, 10, 6) so a trace minute is whole seconds")
    return round(minute)


def trace_autoscaler(s: Settings, svc: PoolServiceSettings, tt: TraceTime, history_minutes: int) -> Autoscaler:
    """`svc`'s autoscaler on the trace's clock and units (`infra.trace_time`): the predictive preset with
    Kubernetes' HPA in shadow, both with their usual durations, in trace seconds."""
    bounds = {"min_replicas": svc.min_replicas, "max_replicas": svc.max_replicas}
    config = AutoscaledService(name=svc.name, scaler=PoolScalerSettings(url=f"http://127.0.0.1:{s.pool.admin_port}"),
                               capacity_rps=svc.capacity_rps / tt.rate_factor,
                               startup_s=svc.startup_delay_s * tt.speedup,
                               knobs=s.demo.predictive_knobs(**bounds),
                               reactive=reactive_knobs(**bounds))
    cfg = AutoscalerSettings(interval_s=s.demo.autoscale_interval_s * tt.speedup, poll_s=1.0, services=[config],
                             history_minutes=history_minutes,
                             # stale once no window landed for 3 windows' time (each closes after its length and
                             # the allowed lateness), not after 6 one-second rounds
                             stale_intervals=math.ceil(3 * s.streams.window_s / s.demo.autoscale_interval_s))
    rates = TraceTimeRates(ClickHouseRates(clickhouse_client(s.clickhouse), s.clickhouse.database), tt,
                           history_window_s(s))
    return Autoscaler([ScaledService(config, build_scaler(config))], rates,
                      ForecastClient(s.serving_url, s.serving_token, timeout_s=s.autoscaler.serving_timeout_s),
                      WallTimeSink(decision_log(s, "demo-autoscale"), tt), cfg, clock=tt.now)


def history_rows(rates: np.ndarray, scale: float, window_s: int, end_s: int, service: str) -> list[tuple[Any, ...]]:
    """Closed service-wide windows, one per trace minute of `rates` (req/s, NaN where the trace has none),
    each `window_s` wall seconds long, the last one ending at `end_s`: the service's past as the stream
    worker would have written it had the replay run all along (requests scaled, rate per wall second)."""
    rows = []
    for k, rate in enumerate(rates):
        if not math.isfinite(rate):
            continue
        n = round(float(rate) * 60 * scale)
        start = end_s - (len(rates) - k) * window_s
        rows.append((datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + window_s, UTC), service,
                     SERVICE_WIDE, n, n / window_s))
    return rows


def backfill_history(s: Settings, svc: PoolServiceSettings, series: RateSeries, first_minute: int, minutes: int,
                     end_s: int) -> int:
    """Write the `minutes` trace minutes before the slice into `features` (see `history_rows`), so the
    forecaster has the history a running service would; returns the rows written."""
    rates = series.values[max(0, first_minute - minutes):first_minute]
    rows = history_rows(rates, s.demo.scale, history_window_s(s), end_s, svc.name)
    cl = clickhouse_client(s.clickhouse, s.clickhouse.database)
    try:
        cl.execute(f"INSERT INTO {s.clickhouse.database}.features (window_start, window_end, service, instance, "
                   "requests, rate) VALUES", rows)
    finally:
        cl.disconnect()
    return len(rows)


def informed_plan(s: Settings, svc: PoolServiceSettings, series: RateSeries, first: int, t0: float,
                  notes: list[str]) -> list[tuple[float, int]]:
    """The informed policy's schedule over the slice (`infra.informed_bound`), its headroom fit on the rest
    of the trace for the predictive policy's SLO; empty (and a note) when the trace cannot fit one."""
    window_min = max(1, round(s.streams.window_s / history_window_s(s)))
    n_windows = math.ceil(s.demo.duration_s / s.streams.window_s)
    rate_factor = s.demo.scale * s.demo.speedup
    slo = s.demo.predictive_knobs().slo
    try:
        headroom = fit_headroom(series.values, SMOOTH_MIN, window_min, first,
                                (first, first + n_windows * window_min), slo, rate_factor, svc.capacity_rps)
    except ValueError as exc:
        notes.append(f"no informed bound: {exc}")
        return []
    counts = informed_counts(series.values, SMOOTH_MIN, first, n_windows, window_min, headroom, rate_factor,
                             svc.capacity_rps, svc.min_replicas, svc.max_replicas)
    bands = ", ".join(f"x{f:.2f}" for f in headroom.factors)
    edges = "/".join(f"{e:g}" for e in headroom.edges)
    notes.append(f"informed bound: told each window's coming-hour mean, with the headroom that keeps all but "
                 f"{slo:.1%} of {window_min}-minute windows covered on the rest of the trace ({bands} for loads "
                 f"split at {edges} req/s)")
    return informed_schedule(counts, t0, s.streams.window_s, svc.startup_delay_s)


def _pool_status(s: Settings, service: str) -> dict[str, Any]:
    answer = httpx.get(f"http://127.0.0.1:{s.pool.admin_port}/v1/pools/{service}", timeout=5)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def _trace_clock(trace_s: float) -> str:
    return datetime.fromtimestamp(trace_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _every(stop: threading.Event, period_s: float, work: Callable[[], None], say: Say, what: str,
           first_at: float | None = None) -> None:
    if first_at is not None:
        stop.wait(max(0.0, first_at - time.time()))
    while not stop.is_set():
        try:
            work()
        except Exception as exc:
            say(f"[yellow]{what}: {exc}[/]")
        stop.wait(period_s)


def _inject_fault(s: Settings, svc: PoolServiceSettings, tl: Timeline, say: Say) -> None:
    """A leak in the oldest ready instance: latency and its resource gauge creep up, then it crashes.
    The oldest, because a scale-down drains the newest first: a fault in it could leave with the scale-down
    instead of being found by the health controller."""
    ready = [i for i in _pool_status(s, svc.name)["instances"] if i["state"] == "ready"]
    if not ready:
        say("[yellow]fault: no ready instance to inject into[/]")
        return
    target = min(ready, key=lambda i: (i.get("started_at") or 0, i["instance"]))
    fault = {"kind": "leak", "start_s": 0, "lead_s": s.demo.fault_lead_s, "factor": 4.0}
    answer = httpx.post(f"http://127.0.0.1:{target['port']}/admin/faults", json=[fault], timeout=5)
    answer.raise_for_status()
    with tl.lock:
        tl.fault = (time.time(), target["instance"])
    say(f"fault: a leak in {svc.name}/{target['instance']}, crashing in {s.demo.fault_lead_s:g} s")


def _integrate(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Seconds x value of a step function sampled at `samples` (held until the next sample)."""
    total = 0.0
    for (t, v), (t_next, _) in zip(samples, [*samples[1:], (end, 0)], strict=True):
        total += v * max(0.0, min(t_next, end) - max(t, start))
    return total


def run_closed_loop(s: Settings, say: Say, report_dir: Path, progress: bool = True) -> LoopSummary:
    svc = s.pool.service(s.demo.loop_service)
    if svc is None:
        raise ValueError(f"demo.loop_service {s.demo.loop_service!r} is not in pool.services")
    loop_s = demo_settings(s, svc)
    health = build_health_controller(loop_s, leadership=False, name="demo-health")  # spools of their own: the
    # stack's copies run too
    tl = Timeline()
    stop = threading.Event()
    notes: list[str] = []

    def sample_pool() -> None:
        body = _pool_status(s, svc.name)
        with tl.lock:
            tl.pool.append((time.time(), int(body["current"]), int(body["ready"])))

    def autoscale_round() -> None:
        report = autoscaler.step(svc.name)
        if report.fallback:
            say(f"[yellow]autoscaler: the reactive fallback decided ({report.fallback})[/]")
        with tl.lock:
            if report.decision is not None and report.decision.after is not None:
                tl.desired.append((time.time(), int(report.decision.after)))
            if report.shadow is not None:
                tl.shadow.append((time.time(), report.shadow))
        if report.decision is not None and report.decision.outcome == "applied":
            d = report.decision
            say(f"autoscaler: {d.before} -> {d.after} ({d.reason})")

    def health_round() -> None:
        report = health.step(svc.name)
        for d in report.decisions:
            with tl.lock:
                tl.drains.append((time.time(), d.target.rsplit("/", 1)[-1], f"{d.action}: {d.outcome}"))
            say(f"health: {d.action} {d.target}: {d.outcome} ({d.reason})")

    # a known starting point: the service's configured instances, ready
    httpx.put(f"http://127.0.0.1:{s.pool.admin_port}/v1/pools/{svc.name}/replicas",
              json={"replicas": max(svc.min_replicas, svc.replicas)}, timeout=5).raise_for_status()
    deadline = time.monotonic() + svc.startup_delay_s + 60
    while _pool_status(s, svc.name)["ready"] < max(svc.min_replicas, svc.replicas):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{svc.name}: instances not ready after {svc.startup_delay_s + 60:.0f} s; "
                               f"see {s.state / 'logs' / 'pool'}")
        time.sleep(1)
    series = load_trace(dataset_path(NASA_RPS))
    first = minute_at(series, s.demo.trace_start)
    _version, history_minutes = ensure_forecaster(s, series, first, demo_horizon_min(s, svc.startup_delay_s), say)
    # The replay's first second is a window boundary, so no live window holds history seconds.
    wall0 = math.ceil((time.time() + 5) / s.streams.window_s) * s.streams.window_s
    tt = TraceTime(wall0=wall0, trace0=float(series.unix_of(np.array(first))), speedup=s.demo.speedup,
                   scale=s.demo.scale)
    autoscaler = trace_autoscaler(s, svc, tt, history_minutes)
    tl.trace = tt
    tl.informed = informed_plan(s, svc, series, first, wall0, notes)
    written = backfill_history(s, svc, series, first, history_minutes, wall0)
    notes.append(f"the autoscaler runs on the trace's clock and units (1995; x{s.demo.speedup:g} time, rates / "
                 f"{tt.rate_factor:g}); its history: the {written} trace minutes before the slice, written to "
                 f"`features` as {history_window_s(s)} s windows ending when the replay starts (the service's past)")
    say(notes[-1])
    threads = [threading.Thread(target=_every, args=(stop, 1.0, sample_pool, say, "pool", wall0), daemon=True),
               threading.Thread(target=_every, args=(stop, s.demo.autoscale_interval_s, autoscale_round, say,
                                                     "autoscaler", wall0), daemon=True),
               threading.Thread(target=_every, args=(stop, s.demo.interval_s, health_round, say, "health", wall0),
                                daemon=True)]
    for t in threads:
        t.start()
    fault_timer = threading.Timer(wall0 - time.time() + s.demo.fault_at_s, _inject_fault, args=(s, svc, tl, say))
    fault_timer.start()
    t0 = wall0
    start_second = int(series.second_index[first])
    say(f"replaying NASA from trace second {start_second} ({_trace_clock(tt.trace0)}) at {s.demo.speedup:g}x, "
        f"rate x{s.demo.scale:g}, for {s.demo.duration_s:g} s through HAProxy :{svc.haproxy_port}")
    try:
        traffic = replay(dataset_path(NASA_RPS), speedup=s.demo.speedup, to="http", start=start_second,
                         base_url=f"http://127.0.0.1:{svc.haproxy_port}/", duration_s=s.demo.duration_s,
                         max_rps=500, progress=progress, scale=s.demo.scale, start_at=wall0)
    finally:
        fault_timer.cancel()
        stop.set()
        for t in threads:
            t.join(timeout=30)
    t1 = time.time()
    time.sleep(s.streams.window_s + s.streams.allowed_lateness_s + 3)  # the last windows close and land
    return summarise(s, svc, tl, traffic, t0, t1, report_dir, notes, say)


def summarise(s: Settings, svc: PoolServiceSettings, tl: Timeline, traffic: ReplaySummary, t0: float, t1: float,
              report_dir: Path, notes: list[str], say: Say) -> LoopSummary:
    cl = clickhouse_client(s.clickhouse, s.clickhouse.database)
    db = s.clickhouse.database
    try:
        windows = [w for w in recent_service_windows(cl, db, svc.name, int(t0)) if w.start_s < t1]
        decisions = cl.execute(f"SELECT count() FROM {db}.decisions WHERE service = %(s)s AND ts_ms >= %(t0)s "
                               "AND ts_ms <= %(t1)s", {"s": svc.name, "t0": int(t0 * 1000), "t1": int(t1 * 1000)})
        truth = (cl.execute(f"SELECT failure_ms FROM {db}.fault_events FINAL WHERE service = %(s)s "
                            "AND instance = %(i)s ORDER BY start_ms DESC LIMIT 1",
                            {"s": svc.name, "i": tl.fault[1]}) if tl.fault else [])
        faulty_requests = (cl.execute(f"SELECT ts_ms, status, latency_ms FROM {db}.access_events WHERE service = "
                                      "%(s)s AND instance = %(i)s AND ts_ms >= %(t0)s",
                                      {"s": svc.name, "i": tl.fault[1], "t0": int(tl.fault[0] * 1000)})
                           if tl.fault else [])
    finally:
        cl.disconnect()
    # measured: each window's load against the ready instances' capacity
    measured_under = 0.0
    oracle = 0.0
    for w in windows:
        secs = w.end_s - w.start_s
        need = max(svc.min_replicas, math.ceil(w.rate / svc.capacity_rps))
        oracle += need * secs
        ready_then = [r for t, _, r in tl.pool if t <= w.end_s]
        if ready_then and w.rate > ready_then[-1] * svc.capacity_rps:
            measured_under += secs
    # counterfactual, like for like: both policies' live decisions applied with the same startup delay
    initial = next((r for t, _, r in tl.pool), max(svc.min_replicas, svc.replicas))
    pred_rs, pred_under = replay_schedule(tl.desired, initial, svc.startup_delay_s, windows, svc.capacity_rps,
                                          t0, t1)
    hpa_rs, hpa_under = replay_schedule(tl.shadow, initial, svc.startup_delay_s, windows, svc.capacity_rps, t0, t1)
    inf_rs, inf_under = (replay_schedule(tl.informed, initial, svc.startup_delay_s, windows, svc.capacity_rps, t0,
                                         t1) if tl.informed else (None, None))
    started = _integrate([(t, c) for t, c, _ in tl.pool], t0, t1)
    sweep: dict[float, tuple[float, float]] = {}
    if tl.trace is not None and tl.shadow:
        rounds = [t for t, _ in tl.shadow]
        for target in HPA_TARGETS:
            knobs = hpa_knobs(target_utilization=target, min_replicas=svc.min_replicas,
                              max_replicas=svc.max_replicas)
            decided = simulate_reactive(rounds, windows, tl.trace, knobs, svc.capacity_rps, svc.startup_delay_s,
                                        s.demo.autoscale_interval_s, initial, s.streams.allowed_lateness_s + 1)
            sweep[target] = replay_schedule(decided, initial, svc.startup_delay_s, windows, svc.capacity_rps, t0,
                                            t1)
    iso = cheapest_at_least_as_safe(sweep, pred_under)
    failed = sum(1 for _, _, f in traffic.answers if f)
    lead = before_errors = None
    onset = error_onset_ms(faulty_requests, REQUEST_TIMEOUT_S * 1000, round(s.streams.window_s * 1000))
    if tl.fault and truth and truth[0][0] is not None:
        drained = [t for t, inst, outcome in tl.drains if inst == tl.fault[1] and outcome.startswith("drain: applied")]
        if drained:
            lead = round(truth[0][0] / 1000 - drained[0], 1)
            before_errors = None if onset is None else round(onset / 1000 - drained[0], 1)
        else:
            notes.append(f"the faulty instance {tl.fault[1]} was not drained before the demo ended")
    elif tl.fault is None:
        notes.append("no fault was injected (the demo ended first, or no instance was ready)")
    underprov = {"predictive": pred_under, "hpa_shadow": hpa_under, "predictive_measured": measured_under,
                 "informed": inf_under}
    replica_seconds = {"predictive": round(pred_rs), "hpa_shadow": round(hpa_rs), "oracle": round(oracle),
                       "predictive_measured": round(started), "informed": None if inf_rs is None else round(inf_rs)}
    allowed = s.demo.predictive_knobs().slo * (t1 - t0)
    summary = LoopSummary(
        wall_s=round(t1 - t0, 1),
        underprov_s=underprov,
        replica_seconds=replica_seconds,
        client_p99_ms=None if (p99 := traffic.latency_ms(0.99)) is None else round(p99, 1),
        client_error_pct=round(100 * failed / max(1, len(traffic.answers)), 3),
        drain_lead_s=lead, drain_before_errors_s=before_errors, decisions=int(decisions[0][0]),
        report=str(report_dir / "index.html"), notes=notes,
        hpa_whatif={f"{t:g}": {"replica_seconds": round(rs), "underprov_s": u} for t, (rs, u) in sweep.items()},
        hpa_at_predictive_slo=None if iso is None else f"{iso:g}", slo_allowed_s=round(allowed, 1),
        checks=demo_checks(underprov, replica_seconds, allowed, lead, tl.fault is not None, before_errors))
    from infra.closed_loop_report import write_report

    write_report(report_dir, summary, tl, windows, traffic, svc.capacity_rps, t0, t1)
    say(f"report: {summary.report}")
    return summary
