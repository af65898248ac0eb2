"""Clients of the serving API: `/v1/weights`, `/v1/forecast` and `/v1/risk`."""

from __future__ import annotations

from typing import TypeVar

import httpx
from pydantic import BaseModel

from serving.schemas import (
    ForecastRequest,
    ForecastResponse,
    RiskRequest,
    RiskResponse,
    WeightsRequest,
    WeightsResponse,
)

Answer = TypeVar("Answer", bound=BaseModel)


class ServingError(RuntimeError):
    pass


class _ServingClient:
    """One HTTP connection pool to serving; every call says which endpoint failed and how."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def _post(self, path: str, body: dict[str, object], answer: type[Answer]) -> Answer:
        try:
            resp = self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ServingError(f"serving at {self.http.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise ServingError(f"{path} answered {resp.status_code}: {resp.text[:300]}")
        return answer.model_validate_json(resp.content)

    def close(self) -> None:
        self.http.close()


class WeightsClient(_ServingClient):
    def weights(self, request: WeightsRequest) -> WeightsResponse:
        return self._post("/v1/weights", request.model_dump(), WeightsResponse)


class ForecastClient(_ServingClient):
    """Client of `/v1/forecast` by service name (serving reads the history from ClickHouse)."""

    def forecast(self, request: ForecastRequest) -> ForecastResponse:
        return self._post("/v1/forecast", request.model_dump(exclude_none=True), ForecastResponse)


class RiskClient(_ServingClient):
    """Client of `/v1/risk`: each instance's probability of failing soon (the model, or the baseline)."""

    def risk(self, request: RiskRequest) -> RiskResponse:
        return self._post("/v1/risk", request.model_dump(), RiskResponse)
