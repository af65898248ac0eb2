"""HTTP API of the serving stage: a FastAPI ingress in front of the weights-model deployment.

The ingress only speaks HTTP (auth, validation, metrics); the model sits behind a deployment
handle so it can batch and scale apart from the API.
"""

import secrets
import time
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request, Response
from fastapi.openapi.models import Example
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.middleware.base import RequestResponseEndpoint

from infra.settings import ServingSettings
from serving.metrics import ApiMetrics
from serving.schemas import InstanceWeight, WeightsRequest, WeightsResponse
from serving.weights_model import DEPLOYMENT_OPTIONS, ModelInfo, Weighed, WeightsModel

# Metric labels: known paths only, so scanners probing random URLs cannot blow up cardinality.
ENDPOINTS = frozenset({"/v1/weights", "/v1/models", "/healthz", "/metrics"})
# Health checks and Prometheus scrapes stay open; the API proper needs the token when one is set.
PROTECTED_PREFIX = "/v1/"

WEIGHTS_EXAMPLES = {
    "fast-and-slow": Example(
        summary="Two instances, one eight times slower",
        value={
            "service": "demo",
            "instances": [
                {"instance": "s1", "latency_p99_ms": 5.0, "latency_p50_ms": 2.0, "requests": 200},
                {"instance": "s2", "latency_p99_ms": 40.0, "latency_p50_ms": 20.0, "requests": 200},
            ],
        },
    ),
    "failing": Example(
        summary="One instance answers only errors and is drained",
        value={
            "service": "demo",
            "instances": [
                {"instance": "s1", "latency_p99_ms": 5.0},
                {"instance": "s2", "latency_p99_ms": 1.0, "error_rate": 1.0},
            ],
        },
    ),
}
WEIGHTS_RESPONSE_EXAMPLE = {
    "service": "demo",
    "model": "inverse-latency",
    "model_version": "baseline",
    "weights": [{"instance": "s1", "weight": 256}, {"instance": "s2", "weight": 37}],
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "A token is configured and the request has none, or a wrong one.",
        "content": {
            "application/json": {"example": {"detail": "missing bearer token: send 'Authorization: Bearer <token>'"}}
        },
    }
}

fastapi_app = FastAPI(
    title="Foresight serving",
    version="0.1.0",
    description="Load-balancer weights from per-instance latency features.",
)


@fastapi_app.middleware("http")
async def guard_and_measure(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """Auth runs here, before FastAPI reads the body, so a caller without the token gets 401, not 422."""
    replica = serve.get_replica_context().servable_object
    if not isinstance(replica, ServingApi):
        raise TypeError(f"guard_and_measure expects a ServingApi replica, got {type(replica).__name__}")
    started = time.perf_counter()
    status = 500  # what the client sees if the endpoint raises
    try:
        response = replica.deny(request) or await call_next(request)
        status = response.status_code
        return response
    finally:
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        replica.metrics.observe(endpoint, request.method, status, time.perf_counter() - started)


class ServingApi:
    """State of one ingress replica: its token, its metrics, the handle to the model."""

    def __init__(self, serving: ServingSettings, model: DeploymentHandle) -> None:
        self._token = serving.token
        self._model = model
        self.metrics = ApiMetrics()

    def deny(self, request: Request) -> JSONResponse | None:
        if not self._token or not request.url.path.startswith(PROTECTED_PREFIX):
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            detail = "missing bearer token: send 'Authorization: Bearer <token>'"
        elif not secrets.compare_digest(given.strip().encode(), self._token.encode()):
            detail = "invalid bearer token"
        else:
            return None
        return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @fastapi_app.post(
        "/v1/weights",
        summary="HAProxy weights for the instances of one service",
        responses={200: {"content": {"application/json": {"example": WEIGHTS_RESPONSE_EXAMPLE}}}, **UNAUTHORIZED},
    )
    async def weights(
        self, body: Annotated[WeightsRequest, Body(openapi_examples=WEIGHTS_EXAMPLES)]
    ) -> WeightsResponse:
        weighed: Weighed = await self._model.weigh.remote(body.instances)
        return WeightsResponse(
            service=body.service,
            model=weighed.model.model,
            model_version=weighed.model.version,
            weights=[
                InstanceWeight(instance=features.instance, weight=weight)
                for features, weight in zip(body.instances, weighed.weights, strict=True)
            ],
        )

    @fastapi_app.get("/v1/models", summary="Models this deployment answers with", responses=UNAUTHORIZED)
    async def models(self) -> list[ModelInfo]:
        return [await self._model.info.remote()]

    @fastapi_app.get("/healthz", summary="Liveness of the ingress")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/metrics", summary="Prometheus metrics of this ingress replica", response_class=Response)
    async def metrics_text(self) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


# Call form rather than decorators: `ServingApi` stays the plain class the middleware checks for.
ServingApiDeployment = serve.deployment(name="ServingApi", **DEPLOYMENT_OPTIONS)(  # type: ignore[arg-type]
    serve.ingress(fastapi_app)(ServingApi))


def build_app(serving: ServingSettings) -> Application:
    """The serving application, ready for `serve.run`."""
    return ServingApiDeployment.bind(serving, WeightsModel.bind())
