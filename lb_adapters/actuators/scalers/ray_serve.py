"""A Ray Serve deployment's replicas through Serve's external scaling API (Ray's dashboard REST API).

`POST /api/v1/applications/{app}/deployments/{deployment}/scale` sets the target; `GET
/api/serve/applications/` reports each replica's state. The application must be deployed with
`external_scaler_enabled` (Serve refuses with 412 otherwise; the error says so). With Ray's token
authentication on (the default of a local head when a token exists), requests carry the token as a
bearer. HTTP only: the autoscaler does not join the Ray cluster, so the same code scales a local head
or a KubeRay cluster.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas

# Replica states that count as started; STOPPING/STOPPED ones are on their way out.
STARTED = frozenset({"STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION"})


class RayServeScaler:
    name = "ray_serve"

    def __init__(self, dashboard_url: str, app: str, deployment: str, token: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.app, self.deployment = app, deployment
        self.target = f"ray_serve/{app}/{deployment}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=dashboard_url, headers=headers, timeout=timeout_s)

    def current(self) -> Replicas:
        details = self._call(lambda: self.http.get("/api/serve/applications/")).json()
        try:
            replicas = details["applications"][self.app]["deployments"][self.deployment]["replicas"]
        except (KeyError, TypeError) as exc:
            raise ActuatorError(f"Ray Serve has no deployment {self.deployment!r} in application {self.app!r}") from exc
        states = [r.get("state") for r in replicas]
        return Replicas(sum(s in STARTED for s in states), sum(s == "RUNNING" for s in states))

    def scale(self, replicas: int) -> None:
        self._call(lambda: self.http.post(
            f"/api/v1/applications/{self.app}/deployments/{self.deployment}/scale",
            json={"target_num_replicas": replicas}))

    def _call(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        try:
            resp = call()
        except httpx.HTTPError as exc:
            raise ActuatorError(f"Ray dashboard at {self.http.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise ActuatorError(f"Ray Serve {self.target}: {resp.request.method} {resp.request.url.path} "
                                f"answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def close(self) -> None:
        self.http.close()
