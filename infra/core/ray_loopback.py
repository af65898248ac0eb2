"""A local Ray head that listens on loopback only (serving's and training's own heads).

Ray's gRPC servers (GCS, raylet, every worker) bind 127.0.0.1 when the node address is 127.0.0.1,
and its agents bind the node address; but `ray.init` turns a loopback `_node_ip_address` into
the host's routable address, unless clusters are off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, what
Ray does on macOS and Windows). So the switch is set for this process and, through the
environment, for every process Ray starts from it.
"""

from __future__ import annotations

import os
from typing import Any

from infra.core.internals import require

LOOPBACK = "127.0.0.1"
CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_head_options() -> dict[str, Any]:
    """Keyword arguments for `ray.init(address="local", ...)`; call just before it (sets the switch)."""
    from ray._private import ray_constants

    os.environ[CLUSTERS_ENV] = "0"  # read at import by the GCS, raylet, agents and workers Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
    return {"_node_ip_address": LOOPBACK, "dashboard_host": LOOPBACK}


def check() -> None:
    """Ray still reads the switch as a module constant that `get_node_ip_address` consults."""
    import inspect

    from ray._private import ray_constants, services

    require("ray", getattr(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR", None) == CLUSTERS_ENV,
            f"ray_constants no longer names {CLUSTERS_ENV}", __name__)
    require("ray", hasattr(ray_constants, "ENABLE_RAY_CLUSTER"), "ray_constants has no ENABLE_RAY_CLUSTER", __name__)
    require("ray", "ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address),
            "get_node_ip_address no longer consults ENABLE_RAY_CLUSTER", __name__)
