"""Request metrics of the serving API, in a registry of their own.

A private registry (not prometheus_client's global one) keeps `/metrics` to what this API
does: the Ray worker process it lives in has collectors of its own we do not want to expose.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

# Model calls are milliseconds; the top buckets catch a cold replica or a Ray hiccup.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "foresight_serving_requests",
            "HTTP requests answered by the serving API.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "foresight_serving_request_duration_seconds",
            "Time to answer an HTTP request, inside the ingress replica.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.model_call = Histogram(
            "foresight_serving_model_call_duration_seconds",
            "Time from the ingress's call on a model deployment to its answer (Ray hop and batching included).",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
