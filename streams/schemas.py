"""The `fs.features` contract: one closed window per service/instance (or `*` for the service)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FeatureWindow(BaseModel):
    v: Literal[1] = 1
    window_start: int = Field(description="Epoch ms UTC, inclusive.")
    window_end: int = Field(description="Epoch ms UTC, exclusive.")
    service: str
    instance: str = Field(description="Instance name, or `*` for the whole service.")
    requests: int
    rate: float = Field(description="Requests per second over the window.")
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    bytes_sent: int
    sessions_max: float = Field(0.0, description="Peak HAProxy current sessions (scur; service: sum of the "
                                "instances' peaks within the window).")
    queue_max: float = Field(0.0, description="Peak HAProxy queue (qcur; service: sum of the instances' peaks "
                             "within the window).")
    conn_errors: float = Field(0.0, description="Increase of HAProxy connection errors over the window.")
    resource_max: float = Field(0.0, description="Peak of the backend's resource ratio, 0 healthy .. 1 about to "
                                "crash (service: the highest instance peak).")
    busy_max: float = Field(0.0, description="Peak share of the backend's workers busy (service: the highest "
                            "instance peak).")
    busy_mean: float = Field(0.0, description="Mean share of the backend's workers busy over the window's samples, "
                             "0 with none: the utilisation the peak overstates (service: the highest instance "
                             "mean).")
    late_events: int = Field(0, description="Events that arrived after the window closed (not in the counts).")
    emitted_at: int = Field(description="Epoch ms when the worker closed the window; the replace version.")

    @property
    def key(self) -> str:
        return f"{self.service}/{self.instance}"


class WindowPartial(BaseModel):
    """One instance's closed window on the internal partials topic, keyed by service, for the
    service-wide (`*`) merge; `acc` is a serialised `WindowAcc` (counts and the DDSketch)."""

    v: Literal[1] = 1
    service: str
    instance: str
    window_start: int = Field(description="Start of the instance window (within its service-wide window).")
    late_events: int = 0
    acc: dict[str, Any]
