"""Everything the local stack started listens on loopback only (`ss`, over each component's process tree).

Reads the running stack; restarts nothing (the `stack` fixture only starts one that is not up).
"""

from __future__ import annotations

from infra.core.settings import Settings
from infra.stack.launcher import status
from tests.integration.sockets import listeners, process_tree


def test_no_component_listens_beyond_loopback(stack: Settings) -> None:
    rows = [r for r in status(stack) if r.pid]
    assert rows, "no component of the stack is running"
    tree = process_tree([r.pid for r in rows if r.pid])
    found = listeners(tree)
    assert {f.process for f in found} >= {"clickhouse-serv", "etcd", "haproxy"}, found  # the check sees them
    beyond = [f for f in found if not f.loopback]
    assert beyond == [], "\n".join(f"{f.proto} {f.address} {f.process} (pid {f.pid})" for f in beyond)
