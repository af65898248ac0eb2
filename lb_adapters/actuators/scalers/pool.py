"""The local instance pool (`foresight pool`) through its admin API: `GET /v1/pools/{service}` and
`PUT /v1/pools/{service}/replicas`."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas


class PoolCounts(BaseModel):
    """The counts of the pool's `PoolStatus` answer that a scaler reads.

    TODO(lead): use `infra.core.pool_api.PoolStatus` once the pool lands on main; this mirrors its JSON."""

    model_config = ConfigDict(extra="ignore")

    service: str
    desired: int
    current: int
    ready: int


class PoolScaler:
    name = "pool"

    def __init__(self, base_url: str, service: str, timeout_s: float = 5.0) -> None:
        self.service = service
        self.target = f"pool/{service}"
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def current(self) -> Replicas:
        status = self._answer(lambda: self.http.get(f"/v1/pools/{self.service}"), 200)
        return Replicas(status.current, status.ready)

    def scale(self, replicas: int) -> None:
        self._answer(lambda: self.http.put(f"/v1/pools/{self.service}/replicas", json={"replicas": replicas}), 202)

    def _answer(self, call: Callable[[], httpx.Response], expect: int) -> PoolCounts:
        try:
            resp = call()
        except httpx.HTTPError as exc:
            raise ActuatorError(f"pool admin API at {self.http.base_url} unreachable: {exc}") from exc
        if resp.status_code != expect:
            raise ActuatorError(f"pool {self.service}: {resp.request.method} {resp.request.url.path} answered "
                                f"{resp.status_code}: {resp.text[:300]}")
        try:
            return PoolCounts.model_validate_json(resp.content)
        except ValidationError as exc:
            raise ActuatorError(f"pool {self.service}: unexpected answer {resp.text[:300]!r}") from exc

    def close(self) -> None:
        self.http.close()
