"""Serve options of the app's deployments, from configuration.

Model deployments autoscale between the configured bounds (a fixed count when they are equal);
the ingress has a fixed count. Half a CPU each: the local head offers 2 and hosts four of them.
"""

from __future__ import annotations

from typing import Any

from infra.core.settings import ServingSettings

# max_ongoing_requests is above max_batch_size, or batches could never fill. Requests take
# milliseconds, so stopping need not wait Serve's default 2s poll / 20s drain.
COMMON_OPTIONS: dict[str, Any] = {
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 256,
    "graceful_shutdown_wait_loop_s": 0.5,
    "graceful_shutdown_timeout_s": 5.0,
    "logging_config": {"enable_access_log": False},  # see serving.runner.start_serve
}


def ingress_options(serving: ServingSettings) -> dict[str, Any]:
    return {**COMMON_OPTIONS, "num_replicas": serving.ingress_replicas}


def model_options(serving: ServingSettings) -> dict[str, Any]:
    if serving.model_min_replicas >= serving.model_max_replicas:
        return {**COMMON_OPTIONS, "num_replicas": serving.model_min_replicas}
    return {**COMMON_OPTIONS, "num_replicas": "auto", "autoscaling_config": {
        "min_replicas": serving.model_min_replicas,
        "max_replicas": serving.model_max_replicas,
        "target_ongoing_requests": serving.target_ongoing_requests,
    }}
