"""The serving app on a real local Ray Serve: trained models served, hot reload, refusals, baselines, auth.

One Serve instance for the whole module (Ray starts in ~10 s); the tests run in file order and
build on each other's registry: empty -> v1 (reload) -> v2 (polling) -> broken versions refused.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
from ray import serve

from infra.core.model_registry import ForecastSpec, ModelManifest, registry_root
from infra.core.ports import free_port
from infra.core.settings import ClickHouseSettings, RaySettings, ServingSettings
from serving import front
from serving.app import build_app
from serving.bench import own_serving
from serving.runner import init_ray, shutdown, start_serve
from tests.integration.sockets import listeners, process_tree
from tests.unit.test_serving_health import LAT_COLUMNS, RISK_COLS, PeerRisk, QueueingLatency
from tests.unit.test_serving_health import register as register_health
from tests.unit.test_serving_loader import QUANTILES, QuantileMLP, register_broken
from training.registry import new_version, write_version

TOKEN = "serving-test-token"
HISTORY_LEN, HORIZON = 30, 15
POLL_S = 1.0
BASE_TIME = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)


@dataclass
class Served:
    url: str
    root: Path  # registry root (<state>/models)
    staging: Path
    modules: dict[str, torch.jit.ScriptModule]
    settings: ServingSettings

    def post(self, path: str, body: Any, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def series(minutes: int, phase: float = 0.0) -> torch.Tensor:
    """Requests per second with an hourly wave, like a service's daily cycle sped up."""
    t = torch.arange(minutes, dtype=torch.float32) + phase
    return 100.0 + 30.0 * torch.sin(2 * math.pi * t / 60.0)


def train(seed: int, steps: int) -> torch.jit.ScriptModule:
    """A few hundred pinball-loss steps on windows of the synthetic series."""
    torch.manual_seed(seed)
    model = QuantileMLP(HISTORY_LEN, HORIZON, len(QUANTILES))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = series(2000) + torch.randn(2000) * 3.0
    levels = torch.tensor(QUANTILES)
    for _ in range(steps):
        starts = torch.randint(0, 2000 - HISTORY_LEN - HORIZON, (64,))
        windows = torch.stack([data[s: s + HISTORY_LEN + HORIZON] for s in starts.tolist()])
        history, target = windows[:, :HISTORY_LEN], windows[:, HISTORY_LEN:]
        pred = model(history, torch.full((64,), math.nan, dtype=torch.float64))
        err = target.unsqueeze(-1) - pred
        loss = torch.maximum(levels * err, (levels - 1) * err).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return torch.jit.script(model.eval())


def register_trained(root: Path, module: torch.jit.ScriptModule, offset_s: int) -> str:
    version = new_version(f"trained{offset_s}", now=BASE_TIME + timedelta(seconds=offset_s))
    manifest = ModelManifest(
        kind="forecast", version=version, name="mlp-quantile", created_at=BASE_TIME, data_fingerprint="synthetic",
        forecast=ForecastSpec(history_len=HISTORY_LEN, horizon=HORIZON, quantiles=QUANTILES))
    history = series(2 * HISTORY_LEN).reshape(2, HISTORY_LEN)
    write_version(root, module, manifest, {"history": history, "next_minute": torch.tensor([math.nan, 1.8e9],
                                                                                           dtype=torch.float64)})
    return version


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    state = Path(tempfile.mkdtemp(prefix="fs-sv-", dir="/tmp"))  # short: Ray's socket paths live under it
    root = registry_root(state)
    serving = own_serving(ServingSettings(token=TOKEN)).model_copy(update={"registry_poll_s": POLL_S})
    closed_port = ClickHouseSettings(tcp_port=free_port())  # no ClickHouse here: name-only forecasts get 503
    init_ray(RaySettings(num_cpus=2), state)
    try:
        start_serve(serving)
        serve.run(build_app(serving, closed_port, root), name="serving-test", route_prefix="/")
        yield Served(f"http://127.0.0.1:{serving.port}", root, state / "staging", {}, serving)
    finally:
        shutdown(local_head=True)
        shutil.rmtree(state, ignore_errors=True)


def reloaded_forecast_version(reload: dict[str, Any]) -> str:
    """In service once reload answers: loaded by it, or by the poller just before (both run `refresh`)."""
    forecast = next(m for m in reload["models"] if m["kind"] == "forecast")
    assert reload["loaded"] in ([], [f"forecast/{forecast['version']}"])
    return str(forecast["version"])


def forecast_status(s: Served) -> dict[str, Any]:
    resp = s.get("/v1/models")
    assert resp.status_code == 200, resp.text
    by_kind = {m["kind"]: m for m in resp.json()}
    assert set(by_kind) == {"forecast", "risk", "weights"}
    return dict(by_kind["forecast"])


def test_missing_model_answers_from_the_baseline_labelled_as_such(served: Served) -> None:
    assert forecast_status(served)["version"] == "baseline"
    resp = served.post("/v1/forecast", {"service": "demo", "history": [None, 10.0, 10.0, None, 10.0], "horizon": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["model_version"]) == ("recent-level-quantiles", "baseline")
    assert body["forecast"] == [[10.0, 10.0, 10.0]] * 5
    assert body["history_source"] == "request" and body["history_minutes"] == 5


def test_a_model_trained_here_is_served_after_reload(served: Served) -> None:
    module = train(seed=1, steps=300)
    version = register_trained(served.root, module, offset_s=0)
    served.modules[version] = module
    resp = served.post("/v1/models/reload", None)
    assert resp.status_code == 200, resp.text
    assert reloaded_forecast_version(resp.json()) == version
    history = series(HISTORY_LEN, phase=7.0)
    resp = served.post("/v1/forecast", {"service": "demo", "history": history.tolist(), "horizon": HORIZON})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["model_version"], body["quantiles"]) == ("mlp-quantile", version, QUANTILES)
    expected = module(history.unsqueeze(0), torch.tensor([math.nan], dtype=torch.float64))[0]
    assert torch.allclose(torch.tensor(body["forecast"]), expected, rtol=1e-5, atol=1e-4)
    # Trained, not random: the median follows the wave within a third of its amplitude.
    truth = series(HISTORY_LEN + HORIZON, phase=7.0)[HISTORY_LEN:]
    assert (torch.tensor(body["forecast"])[:, 1] - truth).abs().mean() < 10.0


def test_a_second_version_is_picked_up_by_polling_without_restart(served: Served) -> None:
    module = train(seed=2, steps=200)
    version = register_trained(served.root, module, offset_s=60)
    served.modules[version] = module
    deadline = time.monotonic() + 30 * POLL_S
    while forecast_status(served)["version"] != version:
        assert time.monotonic() < deadline, f"version {version} not picked up within {30 * POLL_S:.0f}s"
        time.sleep(POLL_S / 2)
    history = series(HISTORY_LEN, phase=3.0)
    resp = served.post("/v1/forecast", {"service": "demo", "history": history.tolist(), "horizon": 4})
    assert resp.status_code == 200, resp.text
    expected = module(history.unsqueeze(0), torch.tensor([math.nan], dtype=torch.float64))[0, :4]
    assert resp.json()["model_version"] == version
    assert torch.allclose(torch.tensor(resp.json()["forecast"]), expected, rtol=1e-5, atol=1e-4)


def test_corrupt_versions_are_refused_while_the_old_one_keeps_answering(served: Served) -> None:
    in_service = forecast_status(served)["version"]
    assert in_service in served.modules
    # Offsets from the unit helper's base time that sort after this module's versions.
    truncated = register_broken(served.root, served.staging, seed=3, offset_s=7200, how="truncated")
    mismatch = register_broken(served.root, served.staging, seed=4, offset_s=7260, how="smoke-mismatch")
    resp = served.post("/v1/models/reload", None)
    assert resp.status_code == 200, resp.text
    assert resp.json()["loaded"] == []
    status = forecast_status(served)  # refused by this reload or by the poller before it
    assert status["version"] == in_service
    reasons = {r["version"]: r["reason"] for r in status["refused"]}
    assert reasons[truncated].startswith("model.pt does not load")
    assert reasons[mismatch].startswith("smoke check failed")
    resp = served.post("/v1/forecast", {"service": "demo", "history": series(HISTORY_LEN).tolist(), "horizon": 2})
    assert resp.status_code == 200 and resp.json()["model_version"] == in_service


def test_unauthenticated_requests_get_401_with_a_message(served: Served) -> None:
    body = {"service": "demo", "history": [1.0]}
    missing = served.post("/v1/forecast", body, token=None)
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"]
    wrong = served.post("/v1/forecast", {"service": "demo"}, token="not-the-token")
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    assert httpx.get(served.url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(served.url + "/healthz", timeout=10).status_code == 200  # probes stay open


def test_malformed_requests_get_422_with_a_message(served: Served) -> None:
    too_many = [{"instance": f"i{i}", "latency_p99_ms": 1.0} for i in range(1001)]
    resp = served.post("/v1/weights", {"service": "demo", "instances": too_many})
    assert resp.status_code == 422 and "at most 1000 items" in resp.text
    resp = served.post("/v1/risk", {"service": "demo", "instances": [{"instance": "a", "latency_p99_ms": -1}]})
    assert resp.status_code == 422 and "greater than or equal to 0" in resp.text
    resp = served.post("/v1/forecast", {"service": "demo", "history": [None, None]})
    assert resp.status_code == 422 and "history has no observed minute" in resp.text
    resp = served.post("/v1/forecast", {"service": "demo", "history": [5.0] * 40, "horizon": HORIZON + 1})
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith(f"horizon {HORIZON + 1} is longer than the {HORIZON} minutes")
    resp = httpx.post(served.url + "/v1/forecast", content=b"{not json", timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert resp.status_code == 422 and "JSON decode error" in resp.text


def test_service_only_forecast_without_clickhouse_says_so(served: Served) -> None:
    resp = served.post("/v1/forecast", {"service": "demo"})
    assert resp.status_code == 503 and "ClickHouse" in resp.json()["detail"]


def test_risk_and_weights_answer_from_named_baselines(served: Served) -> None:
    instances = [{"instance": f"s{i}", "latency_p99_ms": 20.0 + i % 3, "error_rate": 0.0} for i in range(999)]
    instances.append({"instance": "slow", "latency_p99_ms": 400.0, "error_rate": 0.3})
    risk = served.post("/v1/risk", {"service": "demo", "instances": instances})
    assert risk.status_code == 200, risk.text
    body = risk.json()
    assert (body["model"], body["model_version"]) == ("peer-deviation", "baseline")
    by_instance = {r["instance"]: r for r in body["risks"]}
    assert len(by_instance) == 1000 and by_instance["slow"]["risk"] > 0.9
    assert by_instance["slow"]["reasons"][0].startswith("latency_p99_ms 400ms")
    assert max(r["risk"] for name, r in by_instance.items() if name != "slow") < 0.5
    weights = served.post("/v1/weights", {"service": "demo", "instances": instances})
    assert weights.status_code == 200, weights.text
    assert weights.json()["model_version"] == "baseline"
    assert {w["instance"]: w["weight"] for w in weights.json()["weights"]}["slow"] < 20


def test_openapi_documents_every_endpoint_with_examples(served: Served) -> None:
    spec = httpx.get(served.url + "/openapi.json", timeout=10).json()
    operations = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    assert set(operations) == {("/v1/weights", "post"), ("/v1/forecast", "post"), ("/v1/risk", "post"),
                               ("/v1/models", "get"), ("/v1/models/reload", "post"), ("/healthz", "get"),
                               ("/metrics", "get")}
    for (path, _), op in operations.items():
        answers = op["responses"]["200"]["content"]
        assert any("example" in media or "examples" in media for media in answers.values()), path
        if "requestBody" in op:
            assert op["requestBody"]["content"]["application/json"].get("examples"), path


def test_metrics_count_requests_by_endpoint_and_status(served: Served) -> None:
    text = httpx.get(served.url + "/metrics", timeout=10).text
    assert 'foresight_serving_requests_total{endpoint="/v1/forecast",method="POST",status="401"}' in text
    assert 'endpoint="/v1/forecast",method="POST",status="200"' in text


class FailsOnSpikes(torch.nn.Module):
    """Passes its smoke check, then fails on inputs far outside what it was saved with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        if bool((history > 1000.0).any()):
            raise RuntimeError("spike beyond the training range")
        return self.inner(history, next_minute)


def test_a_model_failing_at_request_time_is_answered_for_by_the_baseline(served: Served) -> None:
    torch.manual_seed(5)
    fragile = torch.jit.script(FailsOnSpikes(QuantileMLP(HISTORY_LEN, HORIZON, len(QUANTILES))).eval())
    version = register_trained(served.root, fragile, offset_s=9000)
    resp = served.post("/v1/models/reload", None)
    assert resp.status_code == 200 and reloaded_forecast_version(resp.json()) == version, resp.text
    calm = served.post("/v1/forecast", {"service": "demo", "history": [50.0] * HISTORY_LEN, "horizon": 3})
    assert calm.status_code == 200 and calm.json()["model_version"] == version
    spiky = served.post("/v1/forecast", {"service": "demo", "history": [50.0] * 20 + [5000.0], "horizon": 3})
    assert spiky.status_code == 200, spiky.text
    assert (spiky.json()["model_version"], spiky.json()["model"]) == ("baseline", "recent-level-quantiles")
    assert forecast_status(served)["version"] == version  # still in service for the inputs it handles


def test_health_models_are_served_after_reload_with_their_reasons(served: Served) -> None:
    """Kinds `latency` and `risk` from the registry: /v1/weights and /v1/risk answer from them, named."""
    latency = register_health(served.root, "latency", QueueingLatency(), LAT_COLUMNS, name="queueing")
    risk = register_health(served.root, "risk", PeerRisk(), RISK_COLS, name="peer-mlp")
    resp = served.post("/v1/models/reload", None)
    assert resp.status_code == 200, resp.text
    by_kind = {m["kind"]: m for m in resp.json()["models"]}
    assert (by_kind["weights"]["version"], by_kind["weights"]["columns"]) == (latency, LAT_COLUMNS)
    assert (by_kind["risk"]["version"], by_kind["risk"]["horizon_s"]) == (risk, 60.0)
    instances = [{"instance": f"s{i}", "latency_p99_ms": 30.0, "latency_p50_ms": 10.0, "requests": 100}
                 for i in range(6)]
    instances += [{"instance": "slow", "latency_p99_ms": 400.0, "latency_p50_ms": 120.0, "requests": 100},
                  {"instance": "failing", "latency_p99_ms": 30.0, "latency_p50_ms": 10.0, "requests": 100,
                   "error_rate": 1.0, "sessions": 3, "busy": 0.5}]
    weights = served.post("/v1/weights", {"service": "demo", "instances": instances})
    assert weights.status_code == 200, weights.text
    body = weights.json()
    assert (body["model"], body["model_version"]) == ("queueing", latency)
    by_instance = {w["instance"]: w for w in body["weights"]}
    assert by_instance["s0"]["weight"] == 256 and 0 < by_instance["slow"]["weight"] < 128
    assert by_instance["failing"]["weight"] == 0
    assert by_instance["slow"]["reasons"][0].startswith("capacity ~")
    scored = served.post("/v1/risk", {"service": "demo", "instances": instances})
    assert scored.status_code == 200, scored.text
    assert (scored.json()["model"], scored.json()["model_version"]) == ("peer-mlp", risk)
    risks = {r["instance"]: r for r in scored.json()["risks"]}
    assert risks["failing"]["risk"] > risks["s0"]["risk"] and risks["failing"]["reasons"]


def test_haproxy_fronts_ingress_replicas_that_serve_http_themselves_all_on_loopback(served: Served) -> None:
    """The default front: Serve's HAProxy on the API port, the ingress replica's own server behind it."""
    first, last = served.settings.internal_port_range
    ours = {served.settings.port, *range(first, last + 1)}
    listening = {c.laddr.port: c for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in ours}
    names = {port: psutil.Process(c.pid).name() for port, c in listening.items() if c.pid}
    assert names.get(served.settings.port) == "haproxy", names
    assert {first + front.STATS, first + front.EXPORTER} <= set(listening), listening  # pinned by the wrapper
    assert all(c.laddr.ip == "127.0.0.1" for c in listening.values()), listening
    replica_ports = [port for port in listening if port >= first + front.FIRST_REPLICA]
    assert len(replica_ports) == served.settings.ingress_replicas
    direct = httpx.get(f"http://127.0.0.1:{replica_ports[0]}/healthz", timeout=10)  # the replica itself
    assert direct.status_code == 200 and direct.json() == {"status": "ok"}
    assert httpx.get(f"http://127.0.0.1:{first + front.EXPORTER}/metrics", timeout=10).text.startswith("# HELP")


def test_nothing_the_local_head_started_listens_beyond_loopback(served: Served) -> None:
    """Ray's GCS, raylet, agents and workers, Serve's replicas (and their gRPC) and HAProxy: all on 127.0.0.1."""
    tree = process_tree([os.getpid()])
    found = listeners(tree)
    assert len({f.pid for f in found}) >= 4, found  # raylet, GCS, workers, HAProxy: the check saw them
    assert [f for f in found if not f.loopback] == []
