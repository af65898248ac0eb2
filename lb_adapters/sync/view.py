"""The registry's membership as the sync last saw it: watch events folded into members per service.

Fail-static by construction: a lost watch changes nothing here, and an invalid value never
removes a server; the key keeps its last valid value (or stays absent) and the value is counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from infra.core.service_registry import RegistryEntry, WatchEvent
from lb_adapters.sync.metrics import INVALID
from lb_adapters.sync.plan import Member

log = logging.getLogger(__name__)


def member_of(entry: RegistryEntry) -> Member | None:
    r = entry.record
    if r is None:
        return None
    return Member(instance=entry.instance, address=r.address, port=r.port, weight=r.weight, state=r.state)


class RegistryView:
    def __init__(self, services: Iterable[str]) -> None:
        self.services = set(services)
        self.members: dict[str, dict[str, Member]] = {s: {} for s in self.services}
        self.invalid: Counter[str] = Counter()  # per service, since start
        # keys whose current value is invalid: the sync leaves the balancers' server for them alone
        # (a sync that never saw a valid value there must not remove a server it finds in HAProxy)
        self.unknown: dict[str, set[str]] = {s: set() for s in self.services}
        self.revision = 0
        self.connected = False
        self.synced = False  # a first snapshot arrived: until then the view knows nothing

    def apply(self, event: WatchEvent) -> set[str]:
        """Fold one event in; returns the services whose membership changed."""
        if event.kind == "lost":
            self.connected = False
            return set()
        self.connected = True
        self.revision = max(self.revision, event.revision)
        if event.kind == "resync":
            assert event.snapshot is not None
            self.synced = True
            return self._resync(event.snapshot.entries)
        entry = event.entry
        if entry is None or entry.service not in self.services:
            return set()
        members = self.members[entry.service]
        if event.kind == "delete":
            unknown = entry.instance in self.unknown[entry.service]
            self.unknown[entry.service].discard(entry.instance)
            return {entry.service} if members.pop(entry.instance, None) is not None or unknown else set()
        member = member_of(entry)
        if member is None:
            self._count_invalid(entry)
            self.unknown[entry.service].add(entry.instance)
            return set()
        self.unknown[entry.service].discard(entry.instance)
        if members.get(entry.instance) == member:
            return set()
        members[entry.instance] = member
        return {entry.service}

    def _resync(self, entries: list[RegistryEntry]) -> set[str]:
        fresh: dict[str, dict[str, Member]] = {s: {} for s in self.services}
        unknown: dict[str, set[str]] = {s: set() for s in self.services}
        for entry in entries:
            if entry.service not in self.services:
                continue
            member = member_of(entry)
            if member is None:
                self._count_invalid(entry)
                unknown[entry.service].add(entry.instance)
                kept = self.members[entry.service].get(entry.instance)
                if kept is not None:  # garbage over a healthy server's key: keep the server
                    fresh[entry.service][entry.instance] = kept
                continue
            fresh[entry.service][entry.instance] = member
        changed = {s for s in self.services if fresh[s] != self.members[s] or unknown[s] != self.unknown[s]}
        self.members, self.unknown = fresh, unknown
        return changed

    def _count_invalid(self, entry: RegistryEntry) -> None:
        self.invalid[entry.service] += 1
        INVALID.labels(entry.service).inc()
        log.warning("ignored invalid registry value %s/%s (rev %d): %s", entry.service, entry.instance,
                    entry.mod_revision, entry.error)
