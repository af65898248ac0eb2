"""What to change in a balancer so its servers match the registry: pure functions, no I/O.

The sync keeps, per balancer, the membership it last applied; `diff` against the registry's
gives the changes, in an order that never leaves a moment with fewer serving servers than needed
(adds first, removals last).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from infra.core.contracts import HAPROXY_MAX_WEIGHT

MemberState = Literal["ready", "draining", "drained"]
Action = Literal["add_server", "set_weight", "undrain", "drain", "maint", "remove"]
_ORDER: dict[str, int] = {"add_server": 0, "set_weight": 1, "undrain": 2, "drain": 3, "maint": 4, "remove": 5}


class Member(BaseModel):
    """One server of a balancer, as the registry says it should be."""

    model_config = ConfigDict(frozen=True)

    instance: str
    address: str
    port: int
    weight: int
    state: MemberState = "ready"


class Change(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    instance: str
    before: Member | None
    after: Member | None


def _state_action(state: MemberState) -> Action:
    return {"ready": "undrain", "draining": "drain", "drained": "maint"}[state]  # type: ignore[return-value]


def diff(applied: dict[str, Member], desired: dict[str, Member]) -> list[Change]:
    """Changes that turn `applied` into `desired`. A moved server (new address or port) is
    removed and added again; a server added in a non-ready state is added, then set to it."""
    changes: list[Change] = []
    for name, want in desired.items():
        have = applied.get(name)
        if have is not None and (have.address, have.port) != (want.address, want.port):
            changes.append(Change(action="remove", instance=name, before=have, after=None))
            have = None
        if have is None:
            changes.append(Change(action="add_server", instance=name, before=None, after=want))
            if want.state != "ready":
                changes.append(Change(action=_state_action(want.state), instance=name, before=want, after=want))
            continue
        if have.weight != want.weight:
            changes.append(Change(action="set_weight", instance=name, before=have, after=want))
        if have.state != want.state:
            changes.append(Change(action=_state_action(want.state), instance=name, before=have, after=want))
    for name, have in applied.items():
        if name not in desired:
            changes.append(Change(action="remove", instance=name, before=have, after=None))
    def rank(c: Change) -> int:
        if c.action == "remove" and c.instance in desired:
            return -1  # a moved server leaves before it comes back at its new address
        return _ORDER[c.action]

    return sorted(changes, key=rank)  # stable: one server's changes keep their order


_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


def server_name(instance: str) -> str:
    """An HAProxy server / nginx comment name for an instance id (HAProxy's identifier charset)."""
    return _NAME_BAD.sub("_", instance)[:100] or "_"


def haproxy_weight(weight: int) -> int:
    return max(0, min(HAPROXY_MAX_WEIGHT, weight))


def render_nginx_upstreams(services: dict[str, dict[str, Member]]) -> str:
    """The upstream blocks nginx includes: one per service, drained or weight-0 servers `down`.

    nginx refuses an upstream without servers, so an empty service gets one `down` placeholder
    (clients get 502, which is the truth).
    """
    out = ["# Rendered by `foresight registry-sync` from the registry; edits here are overwritten."]
    for service in sorted(services):
        out.append(f"upstream {upstream_name(service)} {{")
        members = services[service]
        for name in sorted(members):
            m = members[name]
            down = m.state != "ready" or m.weight <= 0
            line = f"    server {m.address}:{m.port} weight={max(1, m.weight)}"
            out.append(f"{line} down;  # {server_name(name)}" if down else f"{line};  # {server_name(name)}")
        if not members:
            out.append("    server 127.0.0.1:9 down;  # no instance registered")
        out.append("}")
    return "\n".join(out) + "\n"


def upstream_name(service: str) -> str:
    return "svc_" + re.sub(r"[^A-Za-z0-9_]", "_", service)
