"""Prometheus metrics of the autoscaler loop (`foresight autoscale`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPLICAS = Gauge("foresight_autoscaler_replicas", "Replicas per service after the last round: desired (after "
                 "guardrails), current and ready (as the scaler reported them), shadow_reactive (what the reactive "
                 "policy would have asked).", ["service", "kind"])
FORECAST = Gauge("foresight_autoscaler_forecast_rps", "Forecast peak (req/s) the last round provisioned for, at "
                 "the quantile used; NaN when the round ran on the fallback.", ["service"])
OBSERVED = Gauge("foresight_autoscaler_observed_rps", "Observed request rate the last round saw.", ["service"])
DECISIONS = Counter("foresight_autoscaler_decisions", "Decisions by outcome (applied, skipped, failed, dry_run, "
                    "hold).", ["service", "outcome"])
FALLBACK = Gauge("foresight_autoscaler_fallback_active", "1 while the reactive fallback decides (predictions "
                 "stale or serving unreachable), else 0.", ["service"])
ROUND_SECONDS = Histogram("foresight_autoscaler_round_seconds", "Time of one decision round (read, forecast, "
                          "decide, act, record).", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
