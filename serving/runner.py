"""Run the serving stage in the foreground: Ray, then Serve, then wait for SIGTERM.

Started by `foresight serve` (the composition root builds the settings and calls `run`).

The stack launcher owns this process (its own session, SIGTERM then SIGKILL), so everything Ray
starts must be torn down here, and the wait must be interruptible by a signal at any point,
including while Ray is still starting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import psutil
import ray
from ray import serve

from infra.core.model_registry import registry_root
from infra.core.ray_loopback import loopback_head_options
from infra.core.settings import ClickHouseSettings, RaySettings, ServingSettings
from serving.app import build_app
from serving.front import LOOPBACK_HOOK, remove_node_files, serve_env

logger = logging.getLogger(__name__)

APP_NAME = "foresight"
# Ray puts unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, and
# AF_UNIX paths stop at 107 bytes: that leaves about 40 for the temp dir itself.
MAX_RAY_TEMP_DIR_CHARS = 40
# Payloads are a few KB; Ray's default (30% of RAM) would only reserve shared memory for nothing.
OBJECT_STORE_BYTES = 128 * 1024**2
SIGNALS = (signal.SIGTERM, signal.SIGINT)
SYSTEM_CONFIG = {
    # After a group SIGTERM has taken the GCS down, ray.shutdown would otherwise wait 5s trying
    # to flush task events (dashboard data we do not use) to it.
    "task_events_shutdown_flush_timeout_ms": 500,
    # No idle workers before Serve asks for them: a stop while ray.init is still running then
    # has only processes of our own process group to take down, none that could be orphaned.
    "prestart_worker_first_driver": False,
}
SERVE_LOGGING = {"enable_access_log": False}
# Serve drains replicas in a few seconds; past this the launcher's SIGKILL would come first.
SERVE_SHUTDOWN_TIMEOUT_S = 10.0


class Stop(KeyboardInterrupt):
    """Raised by the signal handler to break out of whatever Ray call is blocking.

    A KeyboardInterrupt because that is the one exception Ray's blocking calls (`ray.get` waits
    in C++) turn into an interruption; any other would be swallowed and the wait go on.
    """


def ray_temp_dir(state_dir: Path) -> Path:
    """Ray's temp dir: in the state folder when its path is short enough, else in /tmp per user."""
    inside = state_dir.resolve() / "ray"
    if len(str(inside)) <= MAX_RAY_TEMP_DIR_CHARS:
        return inside
    return Path("/tmp") / f"foresight-ray-{os.getuid()}"


def run(serving: ServingSettings, ray_settings: RaySettings, state_dir: Path, clickhouse: ClickHouseSettings) -> None:
    """Serve the API until SIGTERM or SIGINT, then stop Serve and Ray and return.

    Blocks; meant to be the whole life of its process. With no `ray_settings.address` it starts
    a local Ray head of its own and leaves no Ray process behind when it returns. Models come
    from the registry under `state_dir`; `clickhouse` is where forecasts read recent history.
    """
    started = time.monotonic()
    _handle_signals(_raise_stop)
    try:
        init_ray(ray_settings, state_dir)
        # ray.init replaces the SIGTERM handler with its own `sys.exit`; take it back.
        _handle_signals(_raise_stop)
        start_serve(serving, local_head=ray_settings.address is None)
        serve.run(build_app(serving, clickhouse, registry_root(state_dir)), name=APP_NAME, route_prefix="/")
        logger.info(
            "serving ready on http://%s:%d (%.1fs after start)", serving.host, serving.port, time.monotonic() - started
        )
        while True:
            signal.pause()
    except KeyboardInterrupt as stop:  # a Stop, or Ray's re-raise of one from inside a blocking call
        logger.info("serving stopping on %s", stop or "a signal")
    finally:
        _handle_signals(_ignore_while_stopping)  # also when leaving on an error, not a signal
        shutdown(local_head=ray_settings.address is None)


def start_serve(serving: ServingSettings, local_head: bool = True) -> None:
    """Serve on the configured address, with the front `serving.front` names, without access logs.

    The front's switches go into the controller's runtime env (see serving.front), so they reach
    Serve's processes on a local head and on a cluster (not `local_head`) alike. Access log lines
    cost the front and every replica a formatted, flushed record per request; the API's Prometheus
    metrics already count requests by endpoint and status.
    """
    serve.start(http_options={"host": serving.host, "port": serving.port}, logging_config=SERVE_LOGGING,
                controller_options={"runtime_env": {"env_vars": serve_env(serving, local_head)}})


def init_ray(ray_settings: RaySettings, state_dir: Path) -> None:
    """Connect to `ray_settings.address`, or start a local head with its temp dir under the state."""
    if ray_settings.address is not None:
        ray.init(address=ray_settings.address)
        return
    temp_dir = ray_temp_dir(state_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        address="local",  # a new head even if RAY_ADDRESS or a previous cluster is around
        num_cpus=ray_settings.num_cpus,
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        **loopback_head_options(),  # nothing Ray starts listens beyond 127.0.0.1
        # The job's workers (Serve's replicas among them) keep their extra gRPC servers on loopback too.
        runtime_env={"worker_process_setup_hook": LOOPBACK_HOOK},
        _temp_dir=str(temp_dir),
        _system_config=SYSTEM_CONFIG,
    )


def shutdown(local_head: bool) -> None:
    """Stop Serve (unless the local head is already dying with us), then Ray."""
    started = time.monotonic()
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() and local_head else None
    try:
        if ray.is_initialized() and local_head and _head_going_down():
            # Serve's graceful shutdown would wait for actors the dying raylet can no longer reach.
            logger.info("local Ray head already going down with us; skipping Serve's graceful shutdown")
        elif ray.is_initialized():
            asyncio.run(_shutdown_serve())
    except Exception:
        logger.exception("serve shutdown failed; stopping Ray anyway")
    finally:
        serve_done = time.monotonic()
        # Kills what ray.init started (raylet, GCS, agents, workers) and waits until they are gone.
        ray.shutdown(wait_for_processes=True)
        if node_id is not None:
            remove_node_files(node_id)
    logger.info("serving stopped in %.1fs (serve %.1fs)", time.monotonic() - started, serve_done - started)


async def _shutdown_serve() -> None:
    try:
        await asyncio.wait_for(serve.shutdown_async(), SERVE_SHUTDOWN_TIMEOUT_S)
    except TimeoutError:
        logger.warning("serve did not shut down within %.0fs; stopping Ray anyway", SERVE_SHUTDOWN_TIMEOUT_S)


def _head_going_down(settle_s: float = 0.5) -> bool:
    """Whether processes ray.init started under us are exiting on their own.

    They only do when the stop signal went to our whole process group (the launcher's way, and
    Ctrl-C's), so none of them is left to carry out a graceful Serve shutdown.
    """
    children = psutil.Process().children()
    deadline = time.monotonic() + settle_s
    while True:
        if not all(_running(child) for child in children):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _handle_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    for signum in SIGNALS:
        signal.signal(signum, handler)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    # First signal only: the launcher signals the group and then each process, so a second
    # SIGTERM follows at once and must not interrupt the shutdown the first one started.
    _handle_signals(_ignore_while_stopping)
    raise Stop(signal.Signals(signum).name)


def _ignore_while_stopping(signum: int, _frame: FrameType | None) -> None:
    # A handler, not SIG_IGN: an ignored disposition would be inherited by anything spawned now.
    logger.info("already stopping; %s ignored", signal.Signals(signum).name)

