"""What the live dashboard shows of one service, read from the record in ClickHouse.

One snapshot per refresh: the observed rate (service-wide feature windows), the forecast band the
autoscaler acted on (`predictions`), desired replicas (`decisions` of the scaler) and the shadow
HPA's (`hpa_shadow` predictions), instance weights and risk, the latest decisions with their reasons, and component
health. Everything comes from the record, so the page shows what the control plane saw and did.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from clickhouse_driver import Client
from pydantic import BaseModel, Field

from infra.core.features_table import recent_service_windows, recent_services
from infra.core.record_tables import (
    DecisionRow,
    applied_values,
    decision_services,
    forecast_points,
    read_decisions,
    scored_predictions,
)

Point = tuple[int, float]  # (unix s, value)


class ComponentHealth(BaseModel):
    name: str
    state: str


class ServiceSnapshot(BaseModel):
    """The schema of `/api/services/{service}` and of each server-sent event."""

    service: str
    generated_at: float
    window_minutes: int
    rate: list[Point] = Field(description="Observed requests per second per feature window.")
    forecast: dict[str, list[Point]] = Field(description="Forecast per quantile level ('0.5', '0.9'), by target time.")
    desired: list[Point] = Field(description="Replicas the autoscaler set (scale decisions).")
    shadow: list[Point] = Field(description="Replicas the reactive HPA-style policy would have set "
                                "(`hpa_shadow` predictions: a counterfactual, not an action).")
    weights: dict[str, list[Point]] = Field(description="Balancer weight per instance.")
    risk: dict[str, list[Point]] = Field(description="Risk score per instance.")
    decisions: list[DecisionRow] = Field(description="Latest decisions, newest first.")
    health: list[ComponentHealth]


def _by_key(rows: list[tuple[Any, ...]]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = defaultdict(list)
    for key, ts, value in rows:
        out[str(key)].append((int(ts), float(value)))
    return dict(out)


class DashboardData:
    """Reads snapshots; `health` is injected (the stack's probes, or a cluster's own view)."""

    def __init__(self, client: Client, database: str, health: Callable[[], list[ComponentHealth]],
                 window_minutes: int = 60, decisions_shown: int = 50) -> None:
        self.client, self.db, self.health = client, database, health
        self.window_minutes, self.decisions_shown = window_minutes, decisions_shown

    def services(self) -> list[str]:
        since = int(time.time()) - 24 * 3600
        return sorted(set(recent_services(self.client, self.db, since)) | set(decision_services(self.client, self.db,
                                                                                                 since)))

    def snapshot(self, service: str, now_s: float | None = None) -> ServiceSnapshot:
        now = time.time() if now_s is None else now_s
        since = int(now) - self.window_minutes * 60
        forecast = forecast_points(self.client, self.db, service, since)
        scored = scored_predictions(self.client, self.db, service, ("risk", "hpa_shadow"), since)
        acted = applied_values(self.client, self.db, service, since)
        recent = read_decisions(self.client, self.db, 0, service, self.decisions_shown)[::-1]  # newest first
        return ServiceSnapshot(
            service=service, generated_at=now, window_minutes=self.window_minutes,
            rate=[(w.start_s, w.rate) for w in recent_service_windows(self.client, self.db, service, since)],
            forecast={f"{float(q):g}": pts for q, pts in _by_key(forecast).items()},
            desired=[(t, v) for act, action, _, t, v in acted if act == "scaler" and action == "scale"],
            shadow=[(t, v) for kind, _, t, v in scored if kind == "hpa_shadow"],
            weights=_by_key([(target.rsplit("/", 1)[-1], t, v) for _, action, target, t, v in acted
                             if action == "set_weight"]),
            risk=_by_key([(inst, t, v) for kind, inst, t, v in scored if kind == "risk"]),
            decisions=recent,
            health=self.health(),
        )
