"""`foresight bench autoscale`: how long the autoscaler takes from a closed feature window to the
scale action applied, and what one decision round costs.

The real loop (`Autoscaler.run`, polling for new windows every `autoscaler.poll_s`) runs against
the stack's ClickHouse (a database of the bench's own, a day of history so the forecast request
is full size), the stack's serving (`/v1/forecast`) and Kafka (a decision topic of the bench's
own). The bench plays the stream worker: it writes one closed service-wide window at a time and
notes when the insert returned (the window is readable from then on); the scaler is the pool
scaler against the pool's admin API (`--pool-url`) or, by default, a stand-in endpoint of that API
on loopback that keeps reporting one replica, so that every round has a scale action to apply.
The stream worker's own delay from a window's end to its ClickHouse row is not in these figures
(`foresight bench streams` measures it as freshness).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.kafka_admin import ensure_topics, kafka_admin_client
from infra.core.scaling import predictive_knobs
from infra.core.settings import AutoscaledService, PoolScalerSettings, Settings
from infra.workers import decision_log
from lb_adapters.actuators.scalers.pool import PoolScaler
from lb_adapters.autoscaler import Autoscaler, RoundReport, ScaledService
from lb_adapters.predictions import ForecastClient
from lb_adapters.rates import ClickHouseRates

SERVICE = "bench-autoscale"
WINDOW_S = 10


@dataclass
class AutoscaleBench:
    windows: int
    rounds: int
    applied: int
    fallback_rounds: int
    scaler: str
    serving: str
    poll_s: float
    decision_p50_ms: float
    decision_p99_ms: float
    feature_to_applied_p50_s: float
    feature_to_applied_p99_s: float
    notes: list[str] = field(default_factory=list)

    def headline(self) -> dict[str, float]:
        return {"decision_p99_ms": self.decision_p99_ms, "feature_to_applied_p99_s": self.feature_to_applied_p99_s}


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@contextlib.contextmanager
def standin_pool() -> Iterator[str]:
    """A loopback stand-in of the pool's admin API that always reports 1 replica and accepts any change."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, code: int) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps({"service": SERVICE, "desired": 1, "current": 1, "ready": 1, "instances": []}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200)

        def do_PUT(self) -> None:
            self._answer(202)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _at(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def run_autoscale_bench(s: Settings, windows: int = 40, gap_s: float = 1.5, pool_url: str | None = None,
                        say: Callable[[str], None] = lambda _m: None) -> AutoscaleBench:
    run_id = f"{os.getpid()}"
    ch = s.clickhouse.model_copy(update={"database": f"fs_bench_autoscale_{run_id}"})
    kafka = s.kafka.model_copy(update={"topic_decisions": f"fs.bench.as{run_id}.decisions"})
    cfg = s.autoscaler.model_copy(update={"services": [], "dry_run": False})
    migrate(ch)
    ensure_topics(kafka)
    cl = clickhouse_client(ch, ch.database)
    sink = decision_log(s.model_copy(update={"kafka": kafka, "clickhouse": ch}), f"bench-autoscale-{run_id}")
    forecaster = ForecastClient(s.serving_url, s.serving_token, timeout_s=cfg.serving_timeout_s)
    try:
        now = int(time.time()) // WINDOW_S * WINDOW_S
        say(f"writing {cfg.history_minutes} minutes of history into {ch.database}.features")
        history = [(_at(e - WINDOW_S), _at(e), SERVICE, "*", 200, 20.0)
                   for e in range(now - cfg.history_minutes * 60 + WINDOW_S, now - WINDOW_S + 1, WINDOW_S)]
        cl.execute(f"INSERT INTO {ch.database}.features (window_start, window_end, service, instance, requests, "
                   "rate) VALUES", history)
        with contextlib.ExitStack() as stack:
            url = pool_url or stack.enter_context(standin_pool())
            scaler = PoolScaler(url, SERVICE)
            service = AutoscaledService(name=SERVICE, scaler=PoolScalerSettings(url=url), policy="predictive",
                                        capacity_rps=5.0, startup_s=20.0,
                                        knobs=predictive_knobs(quantile=0.9, min_replicas=1, max_replicas=100))
            # the loop's own client: a clickhouse_driver Client is one connection, not for two threads
            loop_cl = clickhouse_client(ch, ch.database)
            stack.callback(loop_cl.disconnect)
            auto = Autoscaler([ScaledService(service, scaler)], ClickHouseRates(loop_cl, ch.database), forecaster,
                              sink, cfg)
            reports: list[RoundReport] = []
            written: dict[int, float] = {}
            stop = threading.Event()
            loop = threading.Thread(target=auto.run, args=(stop, reports.append), daemon=True)
            loop.start()
            time.sleep(cfg.poll_s * 2)  # the first round (interval) is not a window's
            reports.clear()
            say(f"{windows} windows, one every {gap_s:g} s; the loop polls every {cfg.poll_s:g} s")
            end = now
            for i in range(windows):
                end = max(end + 1, int(time.time()))
                rate = 20.0 + 5.0 * (i % 7)
                cl.execute(f"INSERT INTO {ch.database}.features (window_start, window_end, service, instance, "
                           "requests, rate) VALUES",
                           [(_at(end - WINDOW_S), _at(end), SERVICE, "*", int(rate * WINDOW_S), rate)])
                written[end] = time.time()
                time.sleep(gap_s)
            time.sleep(cfg.poll_s + 1.0)
            stop.set()
            loop.join(timeout=30)
        first: dict[int, RoundReport] = {}  # the round that first saw each window (later ones: the interval's)
        for r in reports:
            if r.newest_window_end in written and r.newest_window_end not in first:
                first[r.newest_window_end] = r
        lags = [r.applied_at - written[end] for end, r in first.items() if r.applied_at is not None]
        took = [r.took_s * 1000 for r in reports]
        fallback = sum(r.fallback is not None for r in reports)
        notes = []
        if fallback:
            reasons = {r.fallback for r in reports if r.fallback}
            notes.append(f"{fallback} rounds ran on the fallback: {sorted(reasons)[:2]}")
        if len(lags) < windows:
            notes.append(f"{windows - len(lags)} windows had no applied scale action of their own "
                         "(two windows in one poll, or a round that changed nothing)")
        return AutoscaleBench(
            windows=windows, rounds=len(reports), applied=len(lags), fallback_rounds=fallback,
            scaler="pool admin API" if pool_url else "stand-in pool admin API (loopback)",
            serving=s.serving_url, poll_s=cfg.poll_s,
            decision_p50_ms=round(_p(took, 0.5), 2), decision_p99_ms=round(_p(took, 0.99), 2),
            feature_to_applied_p50_s=round(_p(lags, 0.5), 3), feature_to_applied_p99_s=round(_p(lags, 0.99), 3),
            notes=notes)
    finally:
        with contextlib.suppress(Exception):
            sink.close()
        forecaster.close()
        with contextlib.suppress(Exception):
            cl.execute(f"DROP DATABASE IF EXISTS {ch.database}")
            cl.disconnect()
        with contextlib.suppress(Exception):
            admin = kafka_admin_client(kafka, client_id="foresight-bench-admin")
            try:
                admin.delete_topics([kafka.topic_decisions])
            finally:
                admin.close()


def result_json(result: AutoscaleBench) -> str:
    return json.dumps(result.headline())
