"""What answers on the serving port: HAProxy in front of ingress replicas that speak HTTP themselves.

Serve's default front is its Python HTTP proxy actor: per request it parses HTTP, pickles the
request into a Ray call to the ingress replica and the answer back: for a 1,000-instance
`/v1/weights` call ~5.5 ms of CPU in the proxy, ~1.3 ms in the raylet and ~4 ms more in the
replica (unpickling, and the ASGI messages relayed back). With Serve's HAProxy mode
(`RAY_SERVE_ENABLE_HA_PROXY`), Serve runs HAProxy on the port and each ingress replica runs its
own HTTP server on an internal port; HAProxy (C, ~0.25 ms) forwards to it and that hop is gone.
HAProxy's access log goes to Serve's default syslog target (UDP 127.0.0.1:514).

Serve reads these switches from the environment when its processes start, so they go into the
controller's runtime env, which the actors it creates (HAProxy manager, proxy, replicas) inherit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import stat
from pathlib import Path

from infra.core.settings import ServingSettings
from serving.compat import ray_serve

# Serve puts HAProxy's admin socket at <dir>/<node id, 56 hex>/admin.sock and AF_UNIX paths stop
# at 107 bytes, so the dir is short and in /tmp (one per user; node ids keep heads apart). Its name
# is predictable, so it is private: created 0700, and used only if it is a real directory of ours
# with no access for others (another user could have made it first and put a script of theirs in).
HAPROXY_DIR = Path("/tmp") / f"foresight-haproxy-{os.getuid()}"
# Internal ports, from the first of `serving.internal_ports`: Serve's Python proxy (HAProxy's backup
# while no ingress replica is up), HAProxy's stats page, its Prometheus exporter, then the replicas'.
PROXY, STATS, EXPORTER, FIRST_REPLICA = range(4)

# Both fronts: Serve runs each replica's user code on a thread of its own and each handle's router
# on another event loop by default, so every request crosses threads twice per process; our
# handlers are async and short, so they run on the replica's own loop (~1 ms less CPU per request).
REQUEST_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}

# Ray renders its HAProxy config with the stats page and the exporter bound on every interface
# and has no setting for their address. This wrapper (Serve's HAProxy binary) pins every `bind`
# of the config it is given to the serving host (`serving.compat.ray_serve` knows those lines),
# then becomes HAProxy.
WRAPPER = """#!/bin/sh
# Written by foresight's serving/front.py: pin HAProxy's bind lines to {host}, then exec HAProxy.
prev=
for arg in "$@"; do
  if [ "$prev" = -f ]; then sed -i -E '{pin_binds}' "$arg"; fi
  prev=$arg
done
exec {binary} "$@"
"""


def serve_env(serving: ServingSettings, local_head: bool = True) -> dict[str, str]:
    """Environment for Serve's processes: the front `serving.front` names, on the configured ports.

    On a cluster (not `local_head`) HAProxy runs on the head node, not here: Serve finds
    `serving.haproxy_binary` there itself (an absolute path, or `haproxy` on its PATH) and its
    binds are not pinned (they must be reachable from the other nodes anyway).
    """
    if serving.front == "proxy":
        return dict(REQUEST_PATH_ENV)
    first, last = serving.internal_port_range
    binary: dict[str, str] = {}
    if local_head:
        private_dir(HAPROXY_DIR)
        binary["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(loopback_wrapper(serving))
    elif os.path.isabs(serving.haproxy_binary):
        binary["RAY_SERVE_HAPROXY_BINARY_PATH"] = serving.haproxy_binary
    return {
        **REQUEST_PATH_ENV,
        **binary,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(HAPROXY_DIR / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(HAPROXY_DIR / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(HAPROXY_DIR),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(HAPROXY_DIR / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(HAPROXY_DIR / "metrics.sock"),
        # Per-request Serve metrics from HAProxy's log lines: the API's /metrics already has them.
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # Serve's default log target (UDP 127.0.0.1:514, where nothing listens) makes HAProxy keep a UDP
        # socket on all interfaces: TCP to where it is asked (HAProxy's ring holds lines while the
        # receiver is away), else a unix socket in the private dir, off the network.
        "RAY_SERVE_HAPROXY_LOG_TARGET": serving.haproxy_log_target or str(HAPROXY_DIR / "access-log.sock"),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(first + PROXY),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(first + STATS),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(first + EXPORTER),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first + FIRST_REPLICA),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(last + 1),  # Serve's range excludes its end
        # A stopping ingress replica keeps answering this long so HAProxy can stop sending to it
        # (Serve's default 30 s would outlast the stop deadline of `foresight serve`).
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def loopback_wrapper(serving: ServingSettings) -> Path:
    """The wrapper script for `serving.host` and `serving.haproxy_binary`, written once (named by content)."""
    binary = shutil.which(serving.haproxy_binary)
    if binary is None:
        raise FileNotFoundError(f"serving.front = haproxy needs HAProxy: {serving.haproxy_binary!r} not found "
                                "(apt-get install haproxy, or set serving.haproxy_binary)")
    text = WRAPPER.format(host=serving.host, pin_binds=ray_serve.pin_binds_sed(serving.host),
                          binary=shlex.quote(binary))
    path = private_dir(HAPROXY_DIR) / f"haproxy-{hashlib.sha256(text.encode()).hexdigest()[:12]}.sh"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)  # atomic: other Serve instances may write the same file meanwhile
    return path


class UnsafeDirectory(PermissionError):
    """The HAProxy directory is not ours alone: using it would run or trust another user's files."""


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can use: created 0700, or checked (owner, mode, no symlink)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink or a file)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to us ({os.getuid()})"
    elif info.st_mode & 0o022:
        problem = f"has mode {stat.S_IMODE(info.st_mode):04o}: others may have put files in it"
    elif info.st_mode & 0o077:  # ours, and only we could write in it: just close it
        os.chmod(path, 0o700)
    if problem:
        raise UnsafeDirectory(f"{path} {problem}: remove it (or fix it to 0700 and ours) before starting "
                              "serving with front = haproxy")
    return path


def remove_node_files(node_id: str) -> None:
    """HAProxy's config, socket and logs of one (local, stopped) Ray node."""
    shutil.rmtree(HAPROXY_DIR / node_id, ignore_errors=True)


# Serve's replicas start their inter-deployment gRPC server on `[::]:0` (all interfaces), with no
# setting; on a loopback-only local head this worker setup hook (the job's runtime env, inherited by
# Serve's replicas) pins it to 127.0.0.1, where Serve's routers reach it through the node address
# (127.0.0.1 there).
LOOPBACK_HOOK = "serving.compat.ray_serve.pin_replica_grpc_to_loopback"
