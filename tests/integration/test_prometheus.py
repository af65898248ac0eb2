"""The stack's Prometheus scrapes every component that serves metrics, and its SLO rules evaluate."""

from __future__ import annotations

import time

import httpx

from infra.core.settings import Settings
from infra.stack.components import build_components


def _targets(url: str) -> dict[str, dict]:
    answer = httpx.get(f"{url}/api/v1/targets", timeout=5).json()
    return {t["labels"]["job"]: t for t in answer["data"]["activeTargets"]}


def test_every_component_with_metrics_is_scraped_and_up(stack: Settings) -> None:
    url = f"http://127.0.0.1:{stack.prometheus.port}"
    expected = {c.name for c in build_components(stack) if c.metrics_url and c.name != "prometheus"}
    targets: dict[str, dict] = {}
    deadline = time.monotonic() + 60  # a first scrape of each target: a few scrape intervals
    while time.monotonic() < deadline:
        targets = _targets(url)
        if set(targets) == expected and all(t["health"] == "up" for t in targets.values()):
            break
        time.sleep(1)
    assert set(targets) == expected
    down = {job: t["lastError"] for job, t in targets.items() if t["health"] != "up"}
    assert down == {}


def test_the_slo_rules_are_loaded_and_healthy(stack: Settings) -> None:
    url = f"http://127.0.0.1:{stack.prometheus.port}"
    groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert {"foresight:http_errors:ratio_rate5m", "foresight:slo_error_budget_burn:rate1h",
            "ForesightErrorBudgetFastBurn"} <= set(rules)
    assert all(r["health"] in ("ok", "unknown") for r in rules.values()), rules
