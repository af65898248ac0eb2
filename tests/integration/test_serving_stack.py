"""The stack's serving component answers a forecast from ClickHouse history when given only a service name."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime

import httpx
import torch

from infra.core.db import client as clickhouse_client
from infra.core.settings import Settings


def headers(s: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {s.serving_token}"} if s.serving_token else {}


def test_forecast_by_service_name_reads_its_history_from_clickhouse(stack: Settings) -> None:
    s = stack
    service = f"forecast-{uuid.uuid4().hex[:8]}"
    if time.time() % 60 > 50:  # the history ends at the last whole minute; do not straddle one
        time.sleep(61 - time.time() % 60)
    end_minute = math.floor(time.time() / 60) * 60
    rates = [10.0 + k for k in range(20)]  # req/s of the 20 minutes before end_minute, oldest first
    rows = []
    for k, rate in enumerate(rates):
        minute = end_minute - (len(rates) - k) * 60
        for part in range(6):  # six 10 s windows per minute, as the stream worker writes them
            start = minute + part * 10
            rows.append((datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + 10, UTC), service, "*",
                         int(rate * 10), int(time.time() * 1000)))
    ch = clickhouse_client(s.clickhouse)
    try:
        ch.execute(f"INSERT INTO {s.clickhouse.database}.features "
                   "(window_start, window_end, service, instance, requests, emitted_at) VALUES", rows)
    finally:
        ch.disconnect()

    resp = httpx.post(f"{s.serving_url}/v1/forecast", json={"service": service, "horizon": 5}, headers=headers(s),
                      timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["history_source"] == "clickhouse"
    assert body["history_minutes"] == len(rates)
    assert body["next_minute"] == end_minute
    assert len(body["forecast"]) == 5
    if body["model_version"] == "baseline":  # no forecast model registered in this stack's state
        expected = torch.quantile(torch.tensor(rates, dtype=torch.float64), torch.tensor(body["quantiles"],
                                                                                          dtype=torch.float64))
        assert torch.allclose(torch.tensor(body["forecast"][0], dtype=torch.float64), expected, atol=1e-3)

    unknown = httpx.post(f"{s.serving_url}/v1/forecast", json={"service": f"no-such-{service}"}, headers=headers(s),
                         timeout=30)
    assert unknown.status_code == 404 and "no history for service" in unknown.json()["detail"]
