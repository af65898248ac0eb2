"""The live dashboard in a real browser (Debian's Chromium driven by Playwright), against the
stack's ClickHouse: the page loads, its charts hold exactly the points ClickHouse holds, and a
new decision shows up while the page is open. Screenshots go to the test artifacts folder."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from clickhouse_driver import Client

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.ports import free_port
from infra.core.settings import Settings
from infra.dashboards.data import DashboardData
from infra.dashboards.health import cached_stack_health
from infra.dashboards.web import build_dashboard_app

CHROMIUM = shutil.which("chromium")
# Flags for a closed network (no background fetches that would be refused) and a root user.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-test-token"
SERVICE = "web"
ARTIFACTS = Path(os.environ.get("FORESIGHT_TEST_ARTIFACTS", ".foresight/test-artifacts"))

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: apt-get install chromium (./run does)")


def _decision(cl: Client, db: str, ts_ms: int, actuator: str, target: str, action: str, before: float | None,
              after: float, reason: str) -> None:
    cl.execute(f"INSERT INTO {db}.decisions (ts_ms, service, actuator, target, action, before, after, reason, "
               "prediction_refs, dry_run, outcome) VALUES",
               [(ts_ms, SERVICE, actuator, target, action, before, after, reason, [], 0, "applied")])


@pytest.fixture
def record(stack: Settings) -> Iterator[tuple[Settings, Client]]:
    """A scratch database with 20 minutes of one service's record in it."""
    db = f"dash_{uuid.uuid4().hex[:10]}"
    ch = stack.clickhouse.model_copy(update={"database": db})
    migrate(ch)
    cl = clickhouse_client(ch, db)
    now = int(time.time()) // 10 * 10
    windows = [(now - 1200 + 10 * i, 50 + (i % 30)) for i in range(118)]
    cl.execute(f"INSERT INTO {db}.features (window_start, window_end, service, instance, requests, rate, "
               "status_2xx, status_3xx, status_4xx, status_5xx, latency_p50_ms, latency_p90_ms, latency_p99_ms, "
               "bytes_sent, late_events, emitted_at) VALUES",
               [(start, start + 10, SERVICE, "*", n * 10, n, n * 10, 0, 0, 0, 5.0, 9.0, 20.0, 0, 0, 1)
                for start, n in windows])
    cl.execute(f"INSERT INTO {db}.predictions (ts_ms, kind, service, instance, model, model_version, horizon_s, "
               "quantile, value) VALUES",
               [((now - 600) * 1000, "forecast", SERVICE, "*", "mlp", "v1", h, q, 60.0 + 20 * q + h / 60)
                for h in range(0, 900, 60) for q in (0.5, 0.9)])
    for i, replicas in enumerate((2, 3, 4, 3)):
        _decision(cl, db, (now - 900 + 240 * i) * 1000, "scaler", f"pool/{SERVICE}", "scale", None, replicas,
                  f"predictive: p90 peak needs {replicas}")
        cl.execute(f"INSERT INTO {db}.predictions (ts_ms, kind, service, instance, model, model_version, horizon_s, "
                   "quantile, value) VALUES",
                   [((now - 900 + 240 * i) * 1000, "hpa_shadow", SERVICE, "*", "reactive", "hpa", 0, 0.5,
                     replicas + 1)])
    for i, server in enumerate(("s1", "s2")):
        _decision(cl, db, (now - 300) * 1000 + i, "haproxy", f"{SERVICE}/{server}", "set_weight", 100, 150 - 80 * i,
                  "learned latency")
    try:
        yield stack.model_copy(update={"clickhouse": ch}), cl
    finally:
        cl.execute(f"DROP DATABASE IF EXISTS {db}")
        cl.disconnect()


@pytest.fixture
def dashboard_url(record: tuple[Settings, Client]) -> Iterator[str]:
    s, _ = record
    data = DashboardData(clickhouse_client(s.clickhouse, s.clickhouse.database), s.clickhouse.database,
                         cached_stack_health(s), window_minutes=60)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_dashboard_app(data, token=TOKEN, refresh_s=0.5),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_api_refuses_a_request_without_the_token(dashboard_url: str) -> None:
    answer = httpx.get(f"{dashboard_url}/api/services/{SERVICE}", timeout=10)
    assert answer.status_code == 401
    assert "token" in answer.json()["detail"]
    ok = httpx.get(f"{dashboard_url}/api/services/{SERVICE}", headers={"Authorization": f"Bearer {TOKEN}"},
                   timeout=10)
    assert ok.status_code == 200 and ok.json()["service"] == SERVICE


def test_the_page_shows_the_record_and_a_new_decision_live(record: tuple[Settings, Client],
                                                           dashboard_url: str) -> None:
    from playwright.sync_api import sync_playwright

    s, cl = record
    db = s.clickhouse.database
    windows = cl.execute(f"SELECT count() FROM {db}.features FINAL WHERE service = %(s)s AND instance = '*'",
                         {"s": SERVICE})[0][0]
    decisions = cl.execute(f"SELECT count() FROM {db}.decisions WHERE service = %(s)s", {"s": SERVICE})[0][0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"{dashboard_url}/services/{SERVICE}?token={TOKEN}")
            page.wait_for_selector("body[data-updates]", timeout=15_000)
            observed = page.locator('#chart-rate polyline[data-series="observed"]')
            assert int(observed.get_attribute("data-points") or 0) == windows
            assert page.locator("#chart-rate polygon.band").count() == 1
            assert int(page.locator('#chart-replicas polyline[data-series="desired"]').get_attribute("data-points")
                       or 0) == 4
            assert int(page.locator('#chart-replicas polyline[data-series="shadow HPA"]').get_attribute("data-points")
                       or 0) == 4
            assert page.locator("#chart-weights polyline").count() == 2
            assert page.locator("#decisions tbody tr").count() == decisions
            assert page.locator("#health li").count() > 0
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            reason = f"live check {uuid.uuid4().hex[:8]}"
            _decision(cl, db, int(time.time() * 1000), "scaler", f"pool/{SERVICE}", "scale", 3, 5, reason)
            page.wait_for_selector(f"#decisions td.reason:text-is('{reason}')", timeout=5_000)
            assert page.locator("#decisions tbody tr").count() == decisions + 1
            page.screenshot(path=str(ARTIFACTS / "dashboard-after-decision.png"), full_page=True)
        finally:
            browser.close()
