"""`POST /v1/models/reload` reaches every forecast replica, with registry polling off.

A real local Ray Serve with two forecast model replicas and `registry_poll_s = 0`: the reload
request lands on one of them, and afterwards every answer, from either replica, names the new
version. Two replicas are told apart by when each put its version into service (`loaded_at`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from ray import serve

from infra.core.model_registry import registry_root
from infra.core.ports import free_port
from infra.core.settings import ClickHouseSettings, RaySettings, ServingSettings
from serving.app import build_app
from serving.bench import own_serving
from serving.runner import init_ray, shutdown, start_serve
from tests.unit.test_serving_loader import register

pytestmark = pytest.mark.timeout(300)
ASKS = 40  # answers read after the reload: two replicas picked at random, all 40 from one is 2^-39


def test_reload_reaches_both_forecast_replicas() -> None:
    state = Path(tempfile.mkdtemp(prefix="fs-rr-", dir="/tmp"))  # short: Ray's socket paths live under it
    root = registry_root(state)
    serving = own_serving(ServingSettings(model_min_replicas=2, model_max_replicas=2))
    assert serving.registry_poll_s == 0  # reload only: no replica looks at the registry by itself
    url = f"http://127.0.0.1:{serving.port}"
    init_ray(RaySettings(num_cpus=4), state)  # 3 model deployments x 2 replicas + ingress, half a CPU each
    try:
        start_serve(serving)
        serve.run(build_app(serving, ClickHouseSettings(tcp_port=free_port()), root), name="reload-replicas",
                  route_prefix="/")

        def forecast_answers() -> list[tuple[str, float | None]]:
            out = []
            for _ in range(ASKS):
                models = httpx.get(f"{url}/v1/models", timeout=30).json()
                forecast = next(m for m in models if m["kind"] == "forecast")
                out.append((forecast["version"], forecast["loaded_at"]))
            return out

        assert {v for v, _ in forecast_answers()} == {"baseline"}
        version = register(root, seed=1, offset_s=0, history_len=12, horizon=4)
        assert {v for v, _ in forecast_answers()} == {"baseline"}  # a new folder alone changes nothing
        reload = httpx.post(f"{url}/v1/models/reload", timeout=60)
        assert reload.status_code == 200, reload.text
        assert reload.json()["loaded"] == [f"forecast/{version}"]

        answers = forecast_answers()
        assert {v for v, _ in answers} == {version}, answers
        assert len({loaded for _, loaded in answers}) == 2  # both replicas answered, each loaded it itself
        body = {"service": "demo", "history": [float(i) for i in range(12)], "horizon": 4}
        versions = {httpx.post(f"{url}/v1/forecast", json=body, timeout=30).json()["model_version"]
                    for _ in range(ASKS)}
        assert versions == {version}
    finally:
        shutdown(local_head=True)
        shutil.rmtree(state, ignore_errors=True)
