"""Membership guardrails and registry-value validation: pure functions of the registry's state.

- Never drain or remove the last ready instance of a service, nor take more than `max_unavailable`
  of its instances out of service at once (a fraction, at least one instance).
- Never undo a state an operator set: `metadata["set_by"] == "operator"` pins the state against the
  controllers; only another operator action changes it (the pin lasts for the instance's life).
- A registry value that is not a valid record is rejected with its reason (to count) and ignored:
  it never removes an instance the balancers already know with a valid value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from infra.core.service_registry import InstanceRecord, InstanceState, RegistryEntry

SetBy = Literal["operator", "controller"]
SET_BY = "set_by"

# service -> instance -> the last valid record
Membership = dict[str, dict[str, InstanceRecord]]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class Rejected:
    """A registry value set aside: which key, at which revision, and why."""

    service: str
    instance: str
    mod_revision: int
    reason: str


def unavailable_budget(total: int, max_unavailable: float) -> int:
    """How many of `total` instances may be out of service at once: floor(share * total), at least 1."""
    if not 0 < max_unavailable <= 1:
        raise ValueError(f"max_unavailable {max_unavailable} must be in (0, 1]")
    return max(1, math.floor(max_unavailable * total + 1e-9))


def _count(records: Mapping[str, InstanceRecord], state: InstanceState) -> int:
    return sum(1 for r in records.values() if r.state == state)


def _check_out_of_service(records: Mapping[str, InstanceRecord], victims: Sequence[str], max_unavailable: float,
                          verb: str, removing: bool) -> Verdict:
    unknown = [v for v in victims if v not in records]
    if unknown:
        return Verdict(False, f"unknown instance(s) {', '.join(unknown)}")
    chosen = set(victims)
    ready_victims = [v for v in chosen if records[v].state == "ready"]
    ready = _count(records, "ready")
    ready_after = ready - len(ready_victims)
    if ready_victims and ready_after < 1:
        return Verdict(False, f"{verb} {', '.join(sorted(chosen))} would leave no ready instance "
                              f"({ready} ready of {len(records)}); start another instance first")
    # Removing a draining/drained instance shrinks the service but puts nothing new out of service.
    total = len(records)
    unavailable_after = (total - ready) + len(ready_victims)
    if removing:
        gone = [v for v in chosen if records[v].state != "ready"]
        unavailable_after -= len(gone)
        total -= len(gone)
    budget = unavailable_budget(len(records), max_unavailable)
    if ready_victims and unavailable_after > budget:
        return Verdict(False, f"{verb} {', '.join(sorted(chosen))} would put {unavailable_after} of "
                              f"{len(records)} instances out of service; max_unavailable "
                              f"{max_unavailable:.0%} allows {budget}")
    return Verdict(True, f"{verb} {', '.join(sorted(chosen))}: {ready_after} ready of {total} left, "
                         f"{unavailable_after} out of service (budget {budget})")


def check_drain(records: Mapping[str, InstanceRecord], victims: Sequence[str], max_unavailable: float) -> Verdict:
    """May these instances (of one service, `records` = all its valid instances) be drained now?"""
    return _check_out_of_service(records, victims, max_unavailable, "draining", removing=False)


def check_remove(records: Mapping[str, InstanceRecord], victims: Sequence[str], max_unavailable: float) -> Verdict:
    """May these instances be removed (deregistered/stopped) now? Draining/drained ones always may,
    unless that would leave the service with no ready instance."""
    return _check_out_of_service(records, victims, max_unavailable, "removing", removing=True)


def set_by(record: InstanceRecord) -> str:
    return record.metadata.get(SET_BY, "")


def may_change_state(record: InstanceRecord, new_state: InstanceState, actor: SetBy) -> Verdict:
    """An operator may always change a state; a controller never changes one an operator set, except
    to complete an operator's drain (`draining` -> `drained`), which undoes nothing."""
    if actor == "operator" or record.state == new_state or set_by(record) != "operator" \
            or (record.state, new_state) == ("draining", "drained"):
        return Verdict(True, f"{record.state} -> {new_state} by {actor}")
    return Verdict(False, f"the operator set {record.state!r}; a controller does not undo it")


def choose_victims(records: Mapping[str, InstanceRecord], count: int, max_unavailable: float) -> list[str]:
    """Up to `count` ready instances a controller may drain now: not operator-pinned, newest first,
    as many as the guardrails allow (possibly none)."""
    candidates = sorted((n for n, r in records.items() if r.state == "ready" and set_by(r) != "operator"),
                        key=lambda n: (-records[n].started_at, n))
    chosen: list[str] = []
    for name in candidates:
        if len(chosen) >= count:
            break
        if check_drain(records, [*chosen, name], max_unavailable).allowed:
            chosen.append(name)
    return chosen


# -- validation of registry values --------------------------------------------------------------------

def rejected(entry: RegistryEntry) -> Rejected | None:
    """The rejection of an invalid entry, None for a valid one (or a deletion)."""
    if entry.error is None:
        return None
    return Rejected(entry.service, entry.instance, entry.mod_revision, entry.error)


def membership_from_entries(entries: Iterable[RegistryEntry], previous: Membership | None = None
                            ) -> tuple[Membership, list[Rejected]]:
    """Membership from a full snapshot. An invalid value is rejected; the instance keeps its previous
    valid record if it had one (a garbage write never removes a healthy server)."""
    membership: Membership = {}
    rejects: list[Rejected] = []
    for entry in entries:
        if entry.record is not None:
            membership.setdefault(entry.service, {})[entry.instance] = entry.record
            continue
        if (bad := rejected(entry)) is not None:
            rejects.append(bad)
        kept = (previous or {}).get(entry.service, {}).get(entry.instance)
        if kept is not None:
            membership.setdefault(entry.service, {})[entry.instance] = kept
    return membership, rejects


def apply_change(membership: Membership, kind: Literal["put", "delete"], entry: RegistryEntry
                 ) -> tuple[Membership, Rejected | None]:
    """Membership after one watch event; an invalid put changes nothing and is returned as rejected."""
    services = {s: dict(instances) for s, instances in membership.items()}
    if kind == "delete":
        instances = services.get(entry.service, {})
        instances.pop(entry.instance, None)
        if not instances:
            services.pop(entry.service, None)
        return services, None
    if entry.record is None:
        return services, rejected(entry) or Rejected(entry.service, entry.instance, entry.mod_revision, "no value")
    services.setdefault(entry.service, {})[entry.instance] = entry.record
    return services, None
