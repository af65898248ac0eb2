"""The `fs.features` contract: one closed window per service/instance (or `*` for the service)."""

from __future__ import annotations

from typing import Literal

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
    late_events: int = Field(0, description="Events that arrived after the window closed (not in the counts).")
    emitted_at: int = Field(description="Epoch ms when the worker closed the window; the replace version.")

    @property
    def key(self) -> str:
        return f"{self.service}/{self.instance}"
