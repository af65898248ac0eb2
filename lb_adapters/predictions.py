"""Clients of the serving API: `/v1/weights`, `/v1/forecast` and `/v1/risk`."""

from __future__ import annotations

import httpx

from serving.schemas import (
    ForecastRequest,
    ForecastResponse,
    RiskRequest,
    RiskResponse,
    WeightsRequest,
    WeightsResponse,
)


class ServingError(RuntimeError):
    pass


class WeightsClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def weights(self, request: WeightsRequest) -> WeightsResponse:
        try:
            resp = self.http.post("/v1/weights", json=request.model_dump())
        except httpx.HTTPError as exc:
            raise ServingError(f"serving at {self.http.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise ServingError(f"/v1/weights answered {resp.status_code}: {resp.text[:300]}")
        return WeightsResponse.model_validate_json(resp.content)

    def close(self) -> None:
        self.http.close()


class ForecastClient:
    """Client of `/v1/forecast` by service name (serving reads the history from ClickHouse)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def forecast(self, request: ForecastRequest) -> ForecastResponse:
        try:
            resp = self.http.post("/v1/forecast", json=request.model_dump(exclude_none=True))
        except httpx.HTTPError as exc:
            raise ServingError(f"serving at {self.http.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise ServingError(f"/v1/forecast answered {resp.status_code}: {resp.text[:300]}")
        return ForecastResponse.model_validate_json(resp.content)

    def close(self) -> None:
        self.http.close()


class RiskClient:
    """Client of `/v1/risk`: each instance's probability of failing soon (the model, or the baseline)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def risk(self, request: RiskRequest) -> RiskResponse:
        try:
            resp = self.http.post("/v1/risk", json=request.model_dump())
        except httpx.HTTPError as exc:
            raise ServingError(f"serving at {self.http.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise ServingError(f"/v1/risk answered {resp.status_code}: {resp.text[:300]}")
        return RiskResponse.model_validate_json(resp.content)

    def close(self) -> None:
        self.http.close()
