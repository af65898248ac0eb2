"""HTTP API of the serving stage: a FastAPI ingress in front of one deployment per model kind.

The ingress only speaks HTTP (auth, validation, metrics, reading history from ClickHouse); each
model sits behind a deployment handle so it can batch, scale and reload apart from the API.
Answers are serialised with orjson straight from the model's lists: FastAPI's response-model
validation of a 1,000-instance answer would cost more than the model call.
"""

import asyncio
import logging
import math
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.core.settings import ClickHouseSettings, ServingSettings
from serving import examples
from serving.compat import ray_serve
from serving.deployment_options import ingress_options, model_options
from serving.forecast_model import ForecastCall, ForecastModel, ForecastResult
from serving.history import read_rate_history
from serving.instances_body import component_schemas, parse_instances_body, request_body_doc
from serving.metrics import ApiMetrics
from serving.risk_model import RiskModel, Scored
from serving.schemas import (
    ForecastRequest,
    ForecastResponse,
    ModelStatus,
    ReloadResponse,
    RiskRequest,
    RiskResponse,
    WeightsRequest,
    WeightsResponse,
)
from serving.weights_model import Weighed, WeightsModel

logger = logging.getLogger(__name__)

# Metric labels: known paths only, so scanners probing random URLs cannot blow up cardinality.
ENDPOINTS = frozenset({"/v1/weights", "/v1/forecast", "/v1/risk", "/v1/models", "/v1/models/reload", "/healthz",
                       "/metrics"})
# Health checks and Prometheus scrapes stay open; the API proper needs the token when one is set.
PROTECTED_PREFIX = "/v1/"

fastapi_app = FastAPI(
    title="Foresight serving",
    version="0.2.0",
    description="Load forecasts, instance risk and load-balancer weights. Every answer names the model "
                "version that produced it, or `baseline` when no registered model is in service.",
)


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def error(status_code: int, detail: str) -> Response:
    return json_response({"detail": detail}, status_code)


class GuardAndMeasure:
    """Auth runs here, before FastAPI reads the body, so a caller without the token gets 401, not 422.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the
    endpoint in a task of its own behind memory streams, a cost paid on every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replica = serve.get_replica_context().servable_object
        if not isinstance(replica, ServingApi):
            raise TypeError(f"GuardAndMeasure expects a ServingApi replica, got {type(replica).__name__}")
        started = time.perf_counter()
        status = 500  # what the client sees if the endpoint raises

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            denied = replica.deny(Request(scope))
            if denied is not None:
                await denied(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            replica.metrics.observe(endpoint, scope["method"], status, time.perf_counter() - started)


fastapi_app.add_middleware(GuardAndMeasure)


def openapi_with_read_bodies() -> dict[str, Any]:
    """The generated schema, plus the body models of endpoints that validate their body themselves."""
    if fastapi_app.openapi_schema is None:
        schema = get_openapi(title=fastapi_app.title, version=fastapi_app.version,
                             description=fastapi_app.description, routes=fastapi_app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            component_schemas(WeightsRequest, RiskRequest))
        fastapi_app.openapi_schema = schema
    return fastapi_app.openapi_schema


fastapi_app.openapi = openapi_with_read_bodies  # type: ignore[method-assign]


class ServingApi:
    """State of one ingress replica: its token, its metrics, the handles to the models."""

    def __init__(self, serving: ServingSettings, clickhouse: ClickHouseSettings, weights: DeploymentHandle,
                 forecast: DeploymentHandle, risk: DeploymentHandle) -> None:
        self._token = serving.token.get_secret_value() if serving.token else None
        self._history_max_minutes = serving.forecast_history_max_minutes
        self._clickhouse = clickhouse
        # By value: a call goes straight to the model replica's gRPC server (every replica runs one)
        # instead of a Ray actor call and the object store, ~2 ms less CPU per 1,000-instance request.
        self._weights, self._forecast, self._risk = (ray_serve.by_value(handle)
                                                     for handle in (weights, forecast, risk))
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

    async def _timed(self, kind: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.model_call.labels(kind=kind).observe(time.perf_counter() - started)

    @fastapi_app.post(
        "/v1/weights", summary="HAProxy weights for the instances of one service",
        response_model=WeightsResponse, openapi_extra=request_body_doc(WeightsRequest, examples.WEIGHTS_REQUESTS),
        responses={200: {"content": {"application/json": {"example": examples.WEIGHTS_RESPONSE}}},
                   **examples.ERRORS},
    )
    async def weights(self, request: Request) -> Response:
        """From a `latency` model's predicted capacity and p99 (with reasons), else the baseline: inverse of
        recent p99 latency and queue; errors drain; 0-256 per instance."""
        body = parse_instances_body(await request.body(), WeightsRequest)
        weighed: Weighed = await self._timed("weights", self._weights.weigh.remote(body.rows))
        if weighed.reasons is None:
            weights = [{"instance": name, "weight": weight}
                       for name, weight in zip(body.names, weighed.weights, strict=True)]
        else:
            weights = [{"instance": name, "weight": weight, "reasons": reasons}
                       for name, weight, reasons in zip(body.names, weighed.weights, weighed.reasons, strict=True)]
        return json_response({"service": body.service, "model": weighed.model, "model_version": weighed.version,
                              "weights": weights, **({"note": weighed.note} if weighed.note else {})})

    @fastapi_app.post(
        "/v1/forecast", summary="Quantile forecast of a service's request rate",
        response_model=ForecastResponse,
        responses={200: {"content": {"application/json": {"example": examples.FORECAST_RESPONSE}}},
                   404: {"description": "No history given and none in ClickHouse for the service.",
                         "content": {"application/json": {"example": examples.NO_HISTORY}}},
                   503: {"description": "No history given and ClickHouse unreachable."},
                   **examples.ERRORS},
    )
    async def forecast(
        self, body: Annotated[ForecastRequest, Body(openapi_examples=examples.FORECAST_REQUESTS)]
    ) -> Response:
        """From the history given, or the service's last minutes in ClickHouse `features`."""
        next_minute = body.next_minute
        if body.history is not None:
            history = [math.nan if v is None else float(v) for v in body.history]
            source = "request"
        else:
            status: ModelStatus = await self._forecast.status.remote()
            minutes = min(status.history_len or self._history_max_minutes, self._history_max_minutes)
            try:
                read = await asyncio.to_thread(read_rate_history, self._clickhouse, body.service, minutes,
                                               time.time())
            except Exception as exc:
                logger.warning("reading history of %s from ClickHouse failed: %s", body.service, exc)
                return error(503, f"history of service {body.service!r} unavailable: ClickHouse: "
                                  f"{str(exc).splitlines()[0][:200]}")
            if not read.rates:
                return error(404, f"no history for service {body.service!r} in ClickHouse `features` over the "
                                  f"last {minutes} minutes; send `history` in the request")
            history, source = read.rates, "clickhouse"
            next_minute = next_minute if next_minute is not None else read.next_minute
        call = ForecastCall(history, math.nan if next_minute is None else next_minute, body.horizon)
        result: ForecastResult = await self._timed("forecast", self._forecast.forecast.remote(call))
        if result.error or result.values is None:
            return json_response({"detail": result.error, "model": result.model,
                                  "model_version": result.version}, 422)
        return json_response({
            "service": body.service, "model": result.model, "model_version": result.version,
            "quantiles": result.quantiles, "step_s": result.step_s, "next_minute": next_minute,
            "history_source": source, "history_minutes": len(history), "forecast": result.values,
        })

    @fastapi_app.post(
        "/v1/risk", summary="Risk score per instance, with the reasons that drove it",
        response_model=RiskResponse, openapi_extra=request_body_doc(RiskRequest, examples.RISK_REQUESTS),
        responses={200: {"content": {"application/json": {"example": examples.RISK_RESPONSE}}}, **examples.ERRORS},
    )
    async def risk(self, request: Request) -> Response:
        """A `risk` model's failure probability within its horizon (reasons: the inputs that drove it), else
        the baseline: how far each instance is worse than its service's peers (p99, errors, queue)."""
        body = parse_instances_body(await request.body(), RiskRequest)
        scored: Scored = await self._timed("risk", self._risk.score.remote(body.rows))
        return json_response({
            "service": body.service, "model": scored.model, "model_version": scored.version,
            "risks": [{"instance": name, "risk": risk, "reasons": reasons}
                      for name, risk, reasons in zip(body.names, scored.risks, scored.reasons, strict=True)],
            **({"note": scored.note} if scored.note else {}),
            **({"operating_point": {"drain_above": scored.operating_point[0],
                                    "sustained_s": scored.operating_point[1]}} if scored.operating_point else {}),
        })

    @fastapi_app.get(
        "/v1/models", summary="Models in service per kind, and registry versions refused with their reasons",
        responses={200: {"content": {"application/json": {"example": examples.MODELS_RESPONSE}}},
                   401: examples.ERRORS[401]},
    )
    async def models(self) -> list[ModelStatus]:
        return list(await asyncio.gather(
            self._forecast.status.remote(), self._risk.status.remote(), self._weights.status.remote()))

    @fastapi_app.post(
        "/v1/models/reload", summary="Check the registry for new versions now",
        responses={200: {"content": {"application/json": {"example": examples.RELOAD_RESPONSE}}},
                   401: examples.ERRORS[401]},
    )
    async def reload(self) -> ReloadResponse:
        """Refreshes one replica of each model kind and marks the reload in the registry; every other
        replica follows the mark before its next answer (serving.registry_loader)."""
        answers: list[ReloadResponse] = list(await asyncio.gather(
            self._forecast.reload.remote(), self._risk.reload.remote(), self._weights.reload.remote()))
        return ReloadResponse(models=[m for a in answers for m in a.models],
                              loaded=[v for a in answers for v in a.loaded],
                              refused=[r for a in answers for r in a.refused])

    @fastapi_app.get("/healthz", summary="Liveness of the ingress",
                     responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/metrics", summary="Prometheus metrics of this ingress replica", response_class=Response,
                     responses={200: {"content": {"text/plain": {"example": examples.METRICS_TEXT}}}})
    async def metrics_text(self) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


# Call form rather than decorators: `ServingApi` stays the plain class the middleware checks for.
ServingApiDeployment = serve.deployment(name="ServingApi")(serve.ingress(fastapi_app)(ServingApi))


def build_app(serving: ServingSettings, clickhouse: ClickHouseSettings, registry_root: Path) -> Application:
    """The serving application, ready for `serve.run`; `registry_root` is `<state>/models`."""
    models = model_options(serving)
    return ServingApiDeployment.options(**ingress_options(serving)).bind(
        serving, clickhouse,
        WeightsModel.options(**models).bind(registry_root, serving.registry_poll_s),
        ForecastModel.options(**models).bind(registry_root, serving.registry_poll_s),
        RiskModel.options(**models).bind(registry_root, serving.registry_poll_s),
    )
