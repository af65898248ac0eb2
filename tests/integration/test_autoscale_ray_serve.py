"""The autoscaler loop end to end against real components: the stack's ClickHouse (features, in a
database of this test's own), a real Ray Serve of this test's own (the serving app answering
/v1/forecast, and a small deployment scaled through Serve's external scaling REST API), recording
into a list (the decision log's Kafka/ClickHouse writing is covered by its own tests).

Time is compressed: the test plays the stream worker, writing before each round the 10 s service-wide
windows that closed since the last one, and runs the loop's round with a clock it advances 15 s a
round; only the waits for Serve's replicas take real time.
Mid-run the serving app is deleted from Serve (its API gone, Serve's proxy answers 404): the
rounds go on, on the reactive fallback, labelled, with no scale-down while the load rises.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import ray
from clickhouse_driver import Client
from ray import serve

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.features_table import newest_window_ends, recent_service_windows
from infra.core.model_registry import registry_root
from infra.core.ports import free_port
from infra.core.scaling import predictive_knobs, reactive_knobs
from infra.core.settings import (
    AutoscaledService,
    AutoscalerSettings,
    ClickHouseSettings,
    RayServeScalerSettings,
    ServingSettings,
    load_settings,
)
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas
from lb_adapters.actuators.scalers.ray_serve import RayServeScaler
from lb_adapters.autoscaler import Autoscaler, RoundReport, ScaledService
from lb_adapters.predictions import ForecastClient
from lb_adapters.rates import ClickHouseRates
from lb_adapters.schemas import Decision, PredictionRecord
from serving.app import build_app
from serving.bench import own_serving
from serving.runner import OBJECT_STORE_BYTES, SYSTEM_CONFIG, shutdown, start_serve

SERVICE = "as-ray"
SCALED_APP, SCALED_DEPLOYMENT = "scaled", "Worker"
CAPACITY = 10.0  # req/s one replica serves
WINDOW_S = 10
ROUND_S = 15.0
READY_TIMEOUT_S = 60.0


@serve.deployment(name=SCALED_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0})
class Worker:
    def __call__(self) -> str:
        return "ok"


@dataclass
class Ray:
    dashboard: str
    serving_url: str
    token: str | None  # Ray's token authentication is on when a token file exists

    def scaler(self, app: str = SCALED_APP, deployment: str = SCALED_DEPLOYMENT) -> RayServeScaler:
        return RayServeScaler(self.dashboard, app, deployment, token=self.token)


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[Ray]:
    state = Path(tempfile.mkdtemp(prefix="fs-as-", dir="/tmp"))  # short: Ray's socket paths live under it
    serving = own_serving(ServingSettings(front="proxy"))
    dashboard_port = free_port()
    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=dashboard_port, _temp_dir=str(state),
             _system_config=SYSTEM_CONFIG)
    try:
        start_serve(serving)
        closed = ClickHouseSettings(tcp_port=free_port())  # history is sent in the request; no ClickHouse here
        serve.run(build_app(serving, closed, registry_root(state)), name="serving-test", route_prefix="/")
        serve.run(Worker.bind(), name=SCALED_APP, route_prefix="/scaled",  # type: ignore[attr-defined]
                  external_scaler_enabled=True)
        token_file = Path.home() / ".ray" / "auth_token"
        token = token_file.read_text().strip() if token_file.is_file() else None
        yield Ray(f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{serving.port}", token)
    finally:
        shutdown(local_head=True)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture()
def features() -> Iterator[tuple[ClickHouseSettings, Client]]:
    """A database of this test's own on the stack's ClickHouse. Not the `stack` fixture: that one starts
    (and at the end stops) the whole shared stack when this branch's component list differs from it."""
    ch = load_settings().clickhouse.model_copy(update={"database": f"fs_autoscale_{os.getpid()}"})
    migrate(ch)
    cl = clickhouse_client(ch, ch.database)
    try:
        yield ch, cl
    finally:
        cl.execute(f"DROP DATABASE IF EXISTS {ch.database}")
        cl.disconnect()


@dataclass
class Recorder:
    published: list[tuple[list[Decision], list[PredictionRecord]]] = field(default_factory=list)

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        self.published.append((decisions, list(predictions)))


def write_windows(cl: Client, database: str, start_s: int, end_s: int, rate: float) -> None:
    """Service-wide windows ending in (start_s, end_s] at `rate`, as the stream worker writes them."""
    def at(t: int) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    rows = [(at(e - WINDOW_S), at(e), SERVICE, "*", int(rate * WINDOW_S), rate)
            for e in range(start_s + WINDOW_S, end_s + 1, WINDOW_S)]
    cl.execute(
        f"INSERT INTO {database}.features (window_start, window_end, service, instance, requests, rate) VALUES", rows)


def wait_settled(scaler: RayServeScaler, want: int) -> Replicas:
    """Until Serve runs `want` replicas, all ready (bounded; Serve starts a replica in a few seconds)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        replicas = scaler.current()
        if replicas == Replicas(want, want) or time.monotonic() > deadline:
            return replicas
        time.sleep(0.5)


def test_ray_serve_scaler_sets_and_reads_replicas_through_serves_rest_api(ray_serve: Ray) -> None:
    scaler = ray_serve.scaler()
    assert wait_settled(scaler, 1) == Replicas(1, 1)
    scaler.scale(2)
    assert wait_settled(scaler, 2) == Replicas(2, 2)
    assert httpx.get(f"{ray_serve.serving_url}/scaled", timeout=10).text == "ok"
    with pytest.raises(ActuatorError, match="no deployment 'Nope'"):
        ray_serve.scaler(deployment="Nope").current()
    # Serve refuses the external scaling API for an app deployed without external_scaler_enabled; we say why
    with pytest.raises(ActuatorError, match=r"412.*external_scaler_enabled"):
        ray_serve.scaler("serving-test", "ForecastModel").scale(2)
    scaler.scale(1)
    assert wait_settled(scaler, 1) == Replicas(1, 1)


def test_loop_scales_serve_on_the_served_forecast_and_keeps_deciding_on_the_fallback_when_serving_dies(
        ray_serve: Ray, features: tuple[ClickHouseSettings, Client]) -> None:
    ch, cl = features
    scaler = ray_serve.scaler()
    scaler.scale(1)
    wait_settled(scaler, 1)
    config = AutoscaledService(name=SERVICE,
                               scaler=RayServeScalerSettings(app=SCALED_APP, deployment=SCALED_DEPLOYMENT),
                               policy="predictive", capacity_rps=CAPACITY, startup_s=5.0,
                               knobs=predictive_knobs(headroom=0.1, quantile=0.9, min_replicas=1, max_replicas=4),
                               reactive=reactive_knobs(target_utilization=1.0))
    sim = [float(int(time.time()) // 60 * 60)]
    sink = Recorder()
    auto = Autoscaler([ScaledService(config, scaler)], ClickHouseRates(cl, ch.database),
                      ForecastClient(ray_serve.serving_url, timeout_s=10), sink,
                      AutoscalerSettings(interval_s=ROUND_S, history_minutes=60), clock=lambda: sim[0])
    # 4 minutes at 5 req/s (the baseline forecast is the recent hour's quantiles: a short past lets it
    # follow the ramp), then +2 req/s per round, +3 once serving is gone
    write_windows(cl, ch.database, int(sim[0]) - 240, int(sim[0]), 5.0)
    sim[0] += 2
    reports: list[RoundReport] = []
    rate = 5.0

    def round_at(rate: float) -> RoundReport:
        end = int(sim[0]) // WINDOW_S * WINDOW_S
        newest = newest_window_ends(cl, ch.database, [SERVICE], end - 3600).get(SERVICE, 0)
        if end > newest:
            write_windows(cl, ch.database, newest, end, rate)
        report = auto.step(SERVICE)
        assert report.decision is not None, report.note
        if report.decision.outcome == "applied":
            wait_settled(scaler, int(report.decision.after or 0))
        reports.append(report)
        sim[0] += ROUND_S
        return report

    for _ in range(12):  # serving up: the served forecast (baseline) drives
        rate += 2.0
        r = round_at(rate)
        assert r.fallback is None, r.decision
        forecast = [p for p in r.predictions if p.kind == "forecast"]
        assert forecast and r.decision.prediction_ref == forecast[0].ref()  # type: ignore[union-attr]
        assert {p.model_version for p in forecast} == {"baseline"}
    show(reports)
    up = [r.decision for r in reports if r.decision and r.decision.outcome == "applied"]
    assert up and all(d.after > d.before for d in up)  # type: ignore[operator]
    scaled_up = scaler.current()
    assert scaled_up.ready >= 2
    serve.delete("serving-test")  # serving killed mid-run
    before_kill = len(reports)
    for _ in range(8):  # load still rising
        rate += 3.0
        r = round_at(rate)
        assert r.fallback is not None and r.fallback.startswith("serving unreachable"), r.decision
        assert "fallback" in r.decision.reason and r.decision.prediction_ref == "reactive@observed"  # type: ignore[union-attr]
    after = [r.decision for r in reports[before_kill:] if r.decision is not None]
    downs = [d for d in after if d.after < d.before]  # type: ignore[operator]
    assert len(after) == 8 and downs == []
    assert scaler.current().current >= scaled_up.current
    assert [d for ds, _ in sink.published for d in ds] == [r.decision for r in reports]
    # the reader the loop uses saw this test's windows on ClickHouse 18.16
    assert recent_service_windows(cl, ch.database, SERVICE, int(sim[0]) - 60)
    show(reports)


def show(reports: list[RoundReport]) -> None:
    for r in reports:
        d = r.decision
        assert d is not None
        print(f"{d.before:.0f} -> {d.after:.0f} [{d.outcome}] {d.reason}")
