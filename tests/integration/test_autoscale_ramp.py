"""Predictive against reactive scaling on a real pool, through real HAProxy, under a NASA morning ramp.

Everything runs on a private rig (etcd, the instance pool, HAProxy, the registry sync and a
ClickHouse server of the test's own, on free loopback ports). The same load goes twice through the
same pool and HAProxy: once scaled by the `Autoscaler` with the predictive policy, once with the
reactive (HPA) one. The figures are measured, not simulated: each wall second, the requests HAProxy's
frontend counted against the instances the pool reported ready times their capacity. The load generator
(`ingest.replay`) runs in processes of its own and stays open-loop (up to 3,000 requests in flight), so
an under-provisioned run's backlog does not throttle the arrivals and hide the demand.

Time compression. The load replays Monday 7 August 1995, 06:50-08:00 EDT, at 60 trace seconds per
wall second, so one wall second carries one trace minute of requests (about 18 req/s at 06:50,
50 at 08:00). The forecaster is trained on per-minute rates and sees the previous day in its
input, so the autoscaler runs in trace time: its clock is the trace's (1995) clock, the feature
windows the test writes (as the stream worker would) are one trace minute per wall second, and
the service's capacity and startup are given in trace units (15 req/s per instance = 0.25 trace
req/s; 20 wall seconds of startup = 1,200 trace seconds). The day before the replay is written as
closed windows straight from the trace: the history a stream worker would have written had it run.

The forecast is honest: a forecaster of the production architecture (training.fit), trained here
on the trace up to the replay's first minute only, registered in a private model registry and
answered by serving's own forecast replica code (registry loading, smoke check, batch path) in
process, without Ray and HTTP (a private Ray Serve would cost the machine more than the pool).
The predictive advantage comes from the forecast (which has seen mornings rise), not from the test.
"""

from __future__ import annotations

import math
import multiprocessing
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from clickhouse_driver import Client

from infra.benches.registry_rig import Rig, rig_settings
from infra.core.datasets import NASA_RPS, dataset_path
from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.model_registry import registry_root
from infra.core.scaling import ScalingKnobs, predictive_knobs, reactive_knobs
from infra.core.settings import AutoscaledService, AutoscalerSettings, PoolScalerSettings, PoolServiceSettings
from ingest.replay import replay
from lb_adapters.actuators.scalers.base import Replicas
from lb_adapters.actuators.scalers.pool import PoolScaler
from lb_adapters.autoscaler import Autoscaler, RoundReport, ScaledService
from lb_adapters.predictions import ServingError
from lb_adapters.rates import ClickHouseRates
from serving.forecast_model import ForecastCall, ForecastModelReplica
from serving.schemas import ForecastRequest, ForecastResponse
from tests.integration.waiting import Recorder, wait_for
from training.fit import TrainConfig, script, train
from training.publish import data_fingerprint, publish
from training.series import RateSeries, nasa_layout, read_rps, seconds_to_minutes

SERVICE = "web"
SPEEDUP = 60  # trace seconds per wall second: one wall second = one trace minute
REPLAY_FROM = datetime.fromisoformat("1995-08-07T06:50:00-04:00")  # a Monday; the morning ramp follows
REPLAY_WALL_S = 70  # 70 trace minutes: the capacity is passed about half-way
CAPACITY_RPS = 15.0  # per instance, wall requests per second
STARTUP_S = 20.0  # wall seconds from a scale-up to a ready instance
START_REPLICAS = 2  # enough for 06:50 (about 18 req/s), not for 07:30 (about 40)
MAX_REPLICAS = 8
ROUND_WALL_S = 2.0  # the autoscaler's interval, in wall seconds
RAMP_MEAN_S = 10  # the ramp's level: the mean of this many seconds (trace minutes), not one second's burst
HISTORY_MINUTES = 1470  # the forecaster's input: a day and half an hour
# The load generator: CLIENTS processes, each replaying a share of every trace second's requests with up to
# CLIENT_CONCURRENCY in flight, so that it stays open-loop (arrivals follow the trace, not the answers) when
# an under-provisioned run's backlog grows. One process with 1,000 in flight could not: httpx's connection
# pool costs O(connections^2) per request, the client stalled, and the observed rate fell at the peak.
CLIENTS = 4
CLIENT_CONCURRENCY = 750


class InProcessForecaster:
    """`/v1/forecast` without the HTTP and Ray around it: serving's forecast replica, as each Ray Serve replica
    runs it (newest valid registry version, else the baseline), answering the request the way the API does."""

    def __init__(self, root: Path) -> None:
        self.replica = ForecastModelReplica(root, poll_s=0.0)

    def forecast(self, request: ForecastRequest) -> ForecastResponse:
        assert request.history is not None  # the autoscaler always sends its history
        history = [math.nan if v is None else float(v) for v in request.history]
        next_minute = math.nan if request.next_minute is None else request.next_minute
        [result] = self.replica.forecast_batch([ForecastCall(history, next_minute, request.horizon)])
        if result.error or result.values is None:
            raise ServingError(f"/v1/forecast would answer 422: {result.error}")
        return ForecastResponse(service=request.service, model=result.model, model_version=result.version,
                                quantiles=result.quantiles, step_s=result.step_s, next_minute=request.next_minute,
                                history_source="request", history_minutes=len(history), forecast=result.values)


@dataclass
class Trace:
    series: RateSeries
    rps: np.ndarray  # per-second counts of the whole file
    first_minute: int  # the series minute the replay starts with
    start_unix: float  # its trace time

    @property
    def first_second(self) -> int:
        return int(self.series.second_index[self.first_minute])


@pytest.fixture(scope="module")
def trace() -> Trace:
    rps = read_rps(dataset_path(NASA_RPS))
    series = seconds_to_minutes(rps, nasa_layout())
    start = REPLAY_FROM.timestamp()
    first = int(np.searchsorted(series.unix_of(np.arange(len(series))), start))
    assert series.unix_of(np.array(first)) == start
    return Trace(series, rps, first, start)


@pytest.fixture(scope="module")
def registry(trace: Trace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forecaster trained on the trace before the replay's first minute, in a registry of its own."""
    folder = tmp_path_factory.mktemp("ramp-models")
    cfg = TrainConfig(hidden=32, epochs=3, recent=60)
    fitted = train(trace.series, (0, trace.first_minute), None, cfg)
    root = registry_root(folder)
    publish(root, script(fitted.module), fitted.module.history_len, cfg,
            data_fingerprint(trace.series, {"trace": NASA_RPS, "until_minute": trace.first_minute}),
            {"train_loss": fitted.train_loss}, trace.series)
    return root


@dataclass
class TraceClock:
    """Trace time (epoch s, 1995) from the wall clock: `speedup` trace seconds per wall second from `wall0`."""

    start_unix: float
    speedup: float
    wall0: float = math.inf

    def __call__(self) -> float:
        return self.start_unix + (time.monotonic() - self.wall0) * self.speedup


@dataclass
class RunFigures:
    policy: str
    underprov_s: int  # wall seconds whose observed rate was above ready x capacity
    seconds: int
    exceeded_at: int | None  # first second the ramp (the mean of the last RAMP_MEAN_S seconds) went above the
    # starting instances' capacity
    ready_then: int | None  # instances ready in that second
    replica_seconds: float  # instances started (ready or starting), summed over the seconds
    peak_rps: float
    decisions: list[str]
    client: str  # what the load generator saw
    timeline: str  # every 5 s: mean req/s / instances ready at the end
    arrivals: list[int]  # requests HAProxy counted, each second

    def line(self) -> str:
        return (f"{self.policy:>10}: under-provisioned {self.underprov_s:3d} of {self.seconds} s; load above the "
                f"starting capacity ({START_REPLICAS} x {CAPACITY_RPS:g} req/s) first at second {self.exceeded_at}, "
                f"{self.ready_then} instances ready then; replica-seconds {self.replica_seconds:.0f}; "
                f"peak {self.peak_rps:.0f} req/s; client {self.client}")


FRONTEND_REQUESTS = re.compile(r'^haproxy_frontend_http_requests_total\{proxy="fe_' + SERVICE + r'"\} (\S+)$', re.M)


def frontend_requests(http: httpx.Client, url: str) -> int:
    match = FRONTEND_REQUESTS.search(http.get(url).text)
    assert match, "HAProxy's exporter has no request counter of the service's frontend"
    return int(float(match.group(1)))


@dataclass(frozen=True)
class Traffic:
    sent: int
    errors: int
    p99_ms: float


FORK = multiprocessing.get_context("fork")


def load(trace_file: Path, url: str, wall0: float, answers: multiprocessing.Queue[Traffic]) -> None:
    """The load generator's process: replay the stretch from `wall0` on, open-loop, and report."""
    time.sleep(max(0.0, wall0 - time.monotonic()))
    summary = replay(trace_file, speedup=SPEEDUP, to="http", base_url=url, duration_s=REPLAY_WALL_S, max_rps=400,
                     concurrency=CLIENT_CONCURRENCY)
    answers.put(Traffic(summary.requests_sent, summary.errors, summary.latency_ms(0.99) or 0.0))


def write_history(cl: Client, database: str, trace: Trace) -> None:
    """The day before the replay, one closed window per trace minute, as the stream worker writes them."""
    rows = []
    for m in range(trace.first_minute - HISTORY_MINUTES, trace.first_minute):
        rate = trace.series.values[m]
        if not math.isfinite(rate):
            continue
        start = float(trace.series.unix_of(np.array(m)))
        rows.append((datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + 60, UTC), SERVICE, "*",
                     round(rate * 60), float(rate)))
    cl.execute(f"INSERT INTO {database}.features (window_start, window_end, service, instance, requests, rate) "
               "VALUES", rows)


def run_once(policy: str, rig: Rig, scaler: PoolScaler, trace: Trace, trace_files: list[Path], registry: Path,
             database: str) -> RunFigures:
    """Reset the pool to its starting size, replay the ramp through HAProxy with the autoscaler running
    `policy`, and measure each wall second."""
    scaler.scale(START_REPLICAS)
    wait_for(f"{START_REPLICAS} ready instances and no others",
             lambda: scaler.current() == Replicas(START_REPLICAS, START_REPLICAS), 60)
    ch = rig.s.clickhouse.model_copy(update={"database": database})
    migrate(ch)
    writer = clickhouse_client(ch, database)
    reader = clickhouse_client(ch, database)
    write_history(writer, database, trace)

    to_trace = float(SPEEDUP)
    knobs: ScalingKnobs = (predictive_knobs(min_replicas=1, max_replicas=MAX_REPLICAS) if policy == "predictive"
                           else reactive_knobs(min_replicas=1, max_replicas=MAX_REPLICAS))
    config = AutoscaledService(name=SERVICE, scaler=PoolScalerSettings(url=str(scaler.http.base_url)), policy=policy,
                               capacity_rps=CAPACITY_RPS / to_trace, startup_s=STARTUP_S * to_trace, knobs=knobs)
    cfg = AutoscalerSettings(interval_s=ROUND_WALL_S * to_trace, poll_s=0.25, history_minutes=HISTORY_MINUTES)
    clock = TraceClock(trace.start_unix, to_trace)
    sink = Recorder()
    auto = Autoscaler([ScaledService(config, scaler)], ClickHouseRates(reader, database),
                      InProcessForecaster(registry), sink, cfg, clock=clock)
    rounds: list[RoundReport] = []
    stop = threading.Event()
    samples: list[tuple[int, int, int, int]] = []  # (second, requests counted, current, ready at its end)
    exporter = f"http://127.0.0.1:{rig.s.haproxy.exporter_port}/metrics"
    pool = PoolScaler(str(scaler.http.base_url), SERVICE)  # the sampler's own connection

    def sample() -> None:
        """Each wall second: the frontend's new requests become that trace minute's closed window."""
        with httpx.Client(timeout=5) as http:
            before = frontend_requests(http, exporter)
            second = 0
            while second < REPLAY_WALL_S:
                delay = clock.wall0 + second + 1 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                count = frontend_requests(http, exporter)
                now = pool.current()
                samples.append((second, count - before, now.current, now.ready))
                start = trace.start_unix + second * to_trace
                writer.execute(f"INSERT INTO {database}.features (window_start, window_end, service, instance, "
                               "requests, rate) VALUES",
                               [(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + to_trace, UTC),
                                 SERVICE, "*", count - before, (count - before) / to_trace)])
                before, second = count, second + 1

    sampler = threading.Thread(target=sample, name="ramp-sampler", daemon=True)
    loop = threading.Thread(target=auto.run, args=(stop, rounds.append), name="ramp-autoscaler", daemon=True)
    ready_at_start = scaler.current().ready
    answers: multiprocessing.Queue[Traffic] = FORK.Queue()
    clock.wall0 = time.monotonic() + 1.0  # the replay's first second
    # Forked before this process starts a thread of its own; the clients have their own interpreters, so
    # the autoscaler and the sampler here cannot delay their requests.
    clients = [FORK.Process(target=load, args=(f, f"http://127.0.0.1:{rig.svc.haproxy_port}/", clock.wall0, answers),
                            name=f"ramp-load-{i}", daemon=True) for i, f in enumerate(trace_files)]
    for c in clients:
        c.start()
    try:
        sampler.start()
        time.sleep(max(0.0, clock.wall0 - time.monotonic()))
        loop.start()
        parts = [answers.get(timeout=REPLAY_WALL_S + 120) for _ in clients]
        traffic = Traffic(sum(p.sent for p in parts), sum(p.errors for p in parts), max(p.p99_ms for p in parts))
        sampler.join(timeout=30)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=30)
            if c.is_alive():
                c.kill()
        loop.join(timeout=30)
        writer.disconnect()
        reader.disconnect()
    assert all(c.exitcode == 0 for c in clients) and len(samples) == REPLAY_WALL_S and rounds
    if policy == "predictive":  # the served forecast decided every round, not the fallback
        assert not [r.fallback for r in rounds if r.fallback], [r.fallback for r in rounds if r.fallback][:3]

    under = 0
    exceeded_at = ready_then = None
    previous_ready = ready_at_start
    counts = [requests for _, requests, _, _ in samples]
    for second, requests, _current, ready in samples:
        serving = min(previous_ready, ready)  # an instance counts for a second it was ready all along
        if requests > serving * CAPACITY_RPS:
            under += 1
        level = np.mean(counts[max(0, second + 1 - RAMP_MEAN_S): second + 1])
        if exceeded_at is None and level > START_REPLICAS * CAPACITY_RPS:
            exceeded_at, ready_then = second, serving
        previous_ready = ready
    applied = [f"{d.before:g}->{d.after:g} at {(d.ts / 1000 - trace.start_unix) / to_trace:.0f} s"
               for d in sink.decisions if d.outcome == "applied" and d.before is not None and d.after is not None]
    return RunFigures(policy=policy, underprov_s=under, seconds=len(samples), exceeded_at=exceeded_at,
                      ready_then=ready_then, replica_seconds=float(sum(c for _, _, c, _ in samples)),
                      peak_rps=float(max(r for _, r, _, _ in samples)), decisions=applied,
                      client=f"{traffic.sent} sent, {traffic.errors} errors, worst p99 {traffic.p99_ms:.0f} ms",
                      arrivals=counts,
                      timeline=" ".join(f"{np.mean(counts[i:i + 5]):.0f}/{samples[min(i + 4, len(samples) - 1)][3]}"
                                        for i in range(0, len(samples), 5)))


def test_predictive_scaling_is_ready_before_a_nasa_ramp_that_reactive_scaling_misses(
        trace: Trace, registry: Path, tmp_path: Path) -> None:
    service = PoolServiceSettings(name=SERVICE, replicas=START_REPLICAS, startup_delay_s=STARTUP_S,
                                  capacity_rps=CAPACITY_RPS, workers=2, min_replicas=1, max_replicas=MAX_REPLICAS)
    rig = Rig(rig_settings(tmp_path / "rig", service, private_clickhouse=True))
    # the replayed stretch, and nothing else, split between the clients' files: each second's requests
    # exactly, the remainder going round
    stretch = trace.rps[trace.first_second: trace.first_second + REPLAY_WALL_S * SPEEDUP + SPEEDUP].astype(int)
    trace_files = [tmp_path / f"ramp-{i}.txt" for i in range(CLIENTS)]
    for i, path in enumerate(trace_files):
        share = stretch // CLIENTS + (((i - np.arange(len(stretch))) % CLIENTS) < stretch % CLIENTS)
        path.write_text("\n".join(str(int(v)) for v in share))
    try:
        rig.start("clickhouse", "etcd", "haproxy", "registry-sync", "pool")
        scaler = PoolScaler(f"http://127.0.0.1:{rig.s.pool.admin_port}", SERVICE)
        figures = [run_once(policy, rig, scaler, trace, trace_files, registry, f"ramp_{policy}")
                   for policy in ("predictive", "reactive")]
    finally:
        rig.close()
    for f in figures:
        print(f.line())
        print(f"{'':>12}applied: {', '.join(f.decisions) or 'none'}")
        print(f"{'':>12}every 5 s, req/s / ready: {f.timeline}")
    predictive, reactive = figures
    # the same load in both runs, as HAProxy counted it (a stalled client would make it a different test)
    tens = [(sum(predictive.arrivals[i:i + 10]), sum(reactive.arrivals[i:i + 10])) for i in range(0, REPLAY_WALL_S, 10)]
    worst = max(abs(a - b) / max(a, b, 1) for a, b in tens)
    print(f"arrivals per 10 s, predictive / reactive run: {' '.join(f'{a}/{b}' for a, b in tens)} "
          f"(largest difference {worst:.0%})")
    assert worst <= 0.25, "the two runs did not get the same load"
    assert predictive.exceeded_at is not None, "the ramp never exceeded the starting capacity: nothing was tested"
    assert predictive.ready_then is not None and predictive.ready_then > START_REPLICAS, \
        "predictive scaling had no new instance ready when the load first exceeded the starting capacity"
    assert predictive.underprov_s < reactive.underprov_s, (predictive.line(), reactive.line())
