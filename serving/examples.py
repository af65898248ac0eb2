"""OpenAPI examples of every endpoint: what `/docs` shows callers (kept apart from the handlers)."""

from typing import Any

from fastapi.openapi.models import Example

WEIGHTS_REQUESTS = {
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
WEIGHTS_RESPONSE = {  # from a `latency` model; the baseline (`inverse-latency`) answers without `reasons`
    "service": "demo",
    "model": "mlp-latency",
    "model_version": "20261205T094701Z-e3f6b2d3",
    "weights": [
        {"instance": "s1", "weight": 256, "reasons": [
            "capacity ~42.7 requests/window at predicted p99 <= 1.47e+03 ms (p99 512 ms at an equal share of 13.5)"]},
        {"instance": "s2", "weight": 19, "reasons": [
            "capacity ~3.17 requests/window at predicted p99 <= 1.47e+03 ms (p99 2.1e+03 ms at an equal share of 13.5)",
            "log_p50_ms 7.35 (service median 5.39) raises log p99 by +0.91",
            "p50_vs_peers 1.85 (service median -0.02) raises log p99 by +0.40"]},
    ],
}

FORECAST_REQUESTS = {
    "with-history": Example(
        summary="History in the request (null = missing minute)",
        value={"service": "demo", "history": [12.0, 13.5, None, 14.2, 15.0, 15.8], "next_minute": 1795910400,
               "horizon": 3},
    ),
    "service-only": Example(
        summary="Only the service: history read from ClickHouse `features`",
        value={"service": "demo", "horizon": 10},
    ),
}
FORECAST_RESPONSE = {
    "service": "demo",
    "model": "mlp-quantile",
    "model_version": "20261128T231500Z-3f2a9c1d",
    "quantiles": [0.1, 0.5, 0.9],
    "step_s": 60,
    "next_minute": 1795910400,
    "history_source": "request",
    "history_minutes": 6,
    "forecast": [[13.9, 15.6, 17.4], [13.7, 15.7, 17.9], [13.2, 15.9, 18.6]],
}
NO_HISTORY = {"detail": "no history for service 'demo' in ClickHouse `features` over the last 60 minutes; "
                        "send `history` in the request"}

RISK_REQUESTS = {
    "one-outlier": Example(
        summary="Three instances, one slow and erring",
        value={
            "service": "demo",
            "instances": [
                {"instance": "s1", "latency_p99_ms": 20.0, "error_rate": 0.0},
                {"instance": "s2", "latency_p99_ms": 22.0, "error_rate": 0.01},
                {"instance": "s3", "latency_p99_ms": 180.0, "error_rate": 0.2, "queue": 12},
            ],
        },
    ),
}
RISK_RESPONSE = {
    "service": "demo",
    "model": "peer-deviation",
    "model_version": "baseline",
    "risks": [
        {"instance": "s1", "risk": 0.0, "reasons": []},
        {"instance": "s2", "risk": 0.0, "reasons": []},
        {"instance": "s3", "risk": 0.99, "reasons": [
            "latency_p99_ms 180ms vs peers' median 22ms (z=71.8)",
            "error_rate 0.2 vs peers' median 0.01 (z=9.5)",
            "queue 12 vs peers' median 0 (z=12.0)"]},
    ],
}

MODELS_RESPONSE = [
    {"kind": "forecast", "model": "mlp-quantile", "version": "20261128T231500Z-3f2a9c1d", "loaded_at": 1795910000.0,
     "horizon": 60, "history_len": 240, "quantiles": [0.1, 0.5, 0.9],
     "refused": [{"version": "20261128T232000Z-0b1c2d3e", "refused_at": 1795910100.0,
                  "reason": "model.pt does not load: PytorchStreamReader failed reading zip archive"}]},
    {"kind": "risk", "model": "peer-deviation", "version": "baseline", "loaded_at": None, "horizon": None,
     "quantiles": None, "refused": []},
    {"kind": "weights", "model": "mlp-latency", "version": "20261205T094701Z-e3f6b2d3", "loaded_at": 1795910200.0,
     "horizon": None, "quantiles": None, "columns": ["log_p50_ms", "log_p99_ms", "error_rate", "...", "log_offered"],
     "refused": []},
]
RELOAD_RESPONSE = {"models": MODELS_RESPONSE, "loaded": ["forecast/20261128T231500Z-3f2a9c1d"], "refused": []}

METRICS_TEXT = ('foresight_serving_requests_total{endpoint="/v1/weights",method="POST",status="200"} 42.0\n')

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "A token is configured and the request has none, or a wrong one.",
        "content": {"application/json": {"example": {
            "detail": "missing bearer token: send 'Authorization: Bearer <token>'"}}},
    },
    422: {
        "description": "The request breaks a limit (instances, history length, horizon) or is malformed.",
        "content": {"application/json": {"example": {"detail": [{
            "type": "too_long", "loc": ["body", "instances"],
            "msg": "List should have at most 1000 items after validation, not 1001"}]}}},
    },
}
