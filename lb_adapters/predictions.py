"""Client of the serving API's `/v1/weights`."""

from __future__ import annotations

import httpx

from serving.schemas import WeightsRequest, WeightsResponse


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
