"""Ray Serve's private internals that serving relies on: the one place that touches them.

- `_by_reference=False` on a deployment handle: calls go to the model replica's gRPC server
  instead of a Ray actor call and the object store (~2 ms less CPU per 1,000-instance request).
  It is an underscore option of `DeploymentHandle.options`; the public switch is process-wide.
- The HAProxy config Serve generates (`ray.serve._private.haproxy_templates`) binds its stats
  page and exporter on every interface (`bind :PORT`, `bind *:PORT`) and has no setting for their
  address; `serving.front`'s wrapper rewrites those lines with `pin_binds_sed`.
- Serve reads its HAProxy front's settings from `RAY_SERVE_*` environment variables in
  `ray.serve._private.constants`; a name it stops reading would be ignored without a word.
- A replica starts its inter-deployment gRPC server on `[::]:0` (every interface) through
  `ray.serve._private.replica.add_port_to_grpc_server`, with no setting for the address;
  `pin_replica_grpc_to_loopback` (a worker setup hook on a loopback-only head) rewrites it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

from infra.core.internals import require

LIBRARY = "ray"

# The bind lines of Serve's config that name no address, as a sed (ERE) expression and in Python.
_BIND_ANY_SED = r"s/^([[:space:]]*bind )[*]?:([0-9]+)$/\1{host}:\2/"
_BIND_ANY = re.compile(r"^(\s*bind )\*?:([0-9]+)$")
# Those Serve binds to an address it is given (the API's own frontends): nothing to pin.
_BIND_HOST = re.compile(r"^\s*bind \{\{ config\.\w*host \}\}:")


def by_value(handle: Any) -> Any:
    """`handle` calling its deployment by value (straight to the replica's gRPC server)."""
    return handle.options(_by_reference=False)


def pin_binds_sed(host: str) -> str:
    """A sed expression pinning every address-less `bind` line of Serve's HAProxy config to `host`."""
    return _BIND_ANY_SED.replace("{host}", host)


def check(env_names: Iterable[str] = ()) -> None:
    """The installed Ray still has `_by_reference`, binds as `pin_binds_sed` expects, reads `env_names`."""
    from ray.serve import handle
    from ray.serve._private import constants, haproxy_templates

    options = inspect.signature(handle.DeploymentHandle.options).parameters
    require(LIBRARY, "_by_reference" in options, "DeploymentHandle.options takes no `_by_reference`", __name__)

    template: str = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    binds = [line for line in template.splitlines() if line.strip().startswith("bind ")]
    rendered = {line: re.sub(r"\{\{ config\.\w+_port \}\}", "8404", line) for line in binds}
    unpinned = [line.strip() for line, out in rendered.items() if not (_BIND_ANY.match(out) or _BIND_HOST.match(line))]
    require(LIBRARY, not unpinned, f"Serve's HAProxy config has bind lines the wrapper cannot pin: {unpinned}",
            __name__)
    pinned = [line for line, out in rendered.items() if _BIND_ANY.match(out)]
    for port in ("stats_port", "metrics_port"):
        require(LIBRARY, any(port in line for line in pinned),
                f"Serve's HAProxy config no longer binds `{port}` as `bind [*]:PORT`", __name__)

    source = inspect.getsource(constants)
    unread = sorted(name for name in env_names if f'"{name}"' not in source)
    require(LIBRARY, not unread, f"Serve no longer reads the environment variables {unread}", __name__)


def pin_replica_grpc_to_loopback() -> None:
    """Worker setup hook: Serve's `add_port_to_grpc_server` binds `127.0.0.1:N` where asked for `[::]:N`."""
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "foresight_loopback", False):
        return

    def on_loopback(server: Any, address: str) -> int:
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return int(original(server, address))

    on_loopback.foresight_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback


def check_replica_grpc() -> None:
    """The replica still binds its gRPC server through `add_port_to_grpc_server` on an all-interfaces address."""
    from ray.serve._private import replica

    require(LIBRARY, callable(getattr(replica, "add_port_to_grpc_server", None)),
            "ray.serve._private.replica has no add_port_to_grpc_server", __name__)
    source = inspect.getsource(replica)
    require(LIBRARY, 'add_port_to_grpc_server(self._server, "[::]:0")' in source,
            "Serve's replica no longer binds its gRPC server with add_port_to_grpc_server(server, \"[::]:0\")",
            __name__)
