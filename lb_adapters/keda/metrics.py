"""Prometheus metrics of the KEDA external scaler."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CALLS = Counter("foresight_keda_calls", "gRPC calls KEDA made, by method and outcome.", ["method", "outcome"])
LOAD = Gauge("foresight_keda_load_rps", "Rate last answered for a service, by source (forecast | observed).",
             ["service", "source"])
FALLBACKS = Counter("foresight_keda_fallbacks", "Answers from observed load because predictions were stale.",
                    ["service"])
