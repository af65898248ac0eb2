"""`foresight registry-sync`: HAProxy and nginx membership follow the registry.

One thread watches etcd (a watch, not polling; the registry client resyncs after a reconnect or a
compacted revision) and folds events into a `RegistryView`. The applying thread diffs the view
against what each balancer was last given and applies the difference: HAProxy through its runtime
API (no reload), nginx by re-rendering one upstream file, `nginx -t`, graceful reload. Only the
holder of a service's leadership applies; a standby watches and takes over within the lease TTL.

Fail-static: while etcd is away nothing changes (the balancers keep the last membership); before the
first snapshot nothing is applied at all; an invalid value never removes a server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from infra.core.service_registry import Leadership, Registry
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.actuators.nginx import NginxError, NginxUpstreams
from lb_adapters.schemas import Decision
from lb_adapters.sync import metrics
from lb_adapters.sync.plan import Change, Member, diff, haproxy_weight, render_nginx_upstreams, server_name
from lb_adapters.sync.view import RegistryView

log = logging.getLogger(__name__)

Publish = Callable[[list[Decision]], None]


@dataclass
class SyncConfig:
    services: Sequence[str]
    holder: str = "registry-sync"
    leader_ttl_s: int | None = 10  # None: no election (a single copy, e.g. in a bench)
    del_timeout_s: float = 10.0
    nginx_min_interval_s: float = 0.2  # coalesces bursts into one reload
    nginx_retry_s: float = 2.0  # after a failed reload (nginx down), before trying again
    check_inter_ms: int = 1000
    round_s: float = 0.5  # a round runs at least this often (retries of refused deletes)
    recheck_s: float = 5.0  # how often HAProxy's server list is compared with what was applied


@dataclass
class SyncStats:
    """Counts since start, for tests and the bench (Prometheus has the same under metrics.*)."""

    applied: int = 0
    failed: int = 0
    nginx_reloads: int = 0
    nginx_rejected: int = 0
    events: int = 0
    lost: int = 0
    resyncs: int = 0
    applied_at: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (actuator, service, server)


class MembershipSync:
    def __init__(self, make_registry: Callable[[], Registry], cfg: SyncConfig, haproxy: HAProxyRuntime | None,
                 nginx: NginxUpstreams | None, publish: Publish) -> None:
        self.cfg = cfg
        self.haproxy, self.nginx, self.publish = haproxy, nginx, publish
        self.view = RegistryView(cfg.services)
        self.stats = SyncStats()
        self._watch_registry = make_registry()
        self._control_registry = make_registry()
        self._cond = threading.Condition()
        self._dirty: dict[str, float] = {}  # service -> when its first unapplied event arrived
        self._stop = threading.Event()
        self._fresh: set[str] = set(cfg.services)  # re-read the balancer before diffing
        self._haproxy_applied: dict[str, dict[str, Member]] = {s: {} for s in cfg.services}
        self._nginx_applied: dict[str, dict[str, Member] | None] = {s: None for s in cfg.services}
        self._nginx_rejected: dict[str, str] = {}
        self._nginx_last = 0.0
        self._nginx_due: float | None = None  # a coalesced nginx render waits until then
        self._haproxy_checked = 0.0
        self._failed: dict[tuple[str, str, str], Member | None] = {}
        self._pending_del: dict[tuple[str, str], float] = {}
        self._pending_since: dict[str, float] = {}  # first event of a change nginx has not rendered yet
        self._leaders: dict[str, Leadership] = {}
        self._threads: list[threading.Thread] = []

    # -- threads ------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads.append(threading.Thread(target=self._watch, name="registry-watch", daemon=True))
        if self.cfg.leader_ttl_s is not None:
            for service in self.cfg.services:
                lead = Leadership(self._control_registry, service, self.cfg.holder, ttl_s=self.cfg.leader_ttl_s,
                                  role="registry-sync")
                self._leaders[service] = lead
            self._threads.append(threading.Thread(target=self._campaign, name="leadership", daemon=True))
        self._threads.append(threading.Thread(target=self._apply_loop, name="membership-apply", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._watch_registry.close()
        for t in self._threads:
            t.join(timeout=5)
        for lead in self._leaders.values():
            lead.resign()
        self._control_registry.close()

    def leads(self, service: str) -> bool:
        lead = self._leaders.get(service)
        return lead is None or lead.is_leader

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch_once()
            except Exception:  # a bug or an odd answer must not leave the balancers unattended
                log.exception("registry watch failed; watching again (the next snapshot resyncs)")
                self._stop.wait(1.0)

    def _watch_once(self) -> None:
        for event in self._watch_registry.watch(None):
            if self._stop.is_set():
                return
            metrics.EVENTS.labels(event.kind).inc()
            self.stats.events += 1
            with self._cond:
                changed = self.view.apply(event)
                metrics.ETCD_UP.set(1 if self.view.connected else 0)
                if event.kind == "lost":
                    self.stats.lost += 1
                    log.warning("etcd unreachable (%s): balancers keep the last membership", event.reason)
                elif event.kind == "resync":
                    self.stats.resyncs += 1
                    log.info("registry snapshot at revision %d (%s)", event.revision, event.reason)
                now = time.monotonic()
                for service in changed:
                    self._dirty.setdefault(service, now)
                if changed:
                    self._cond.notify_all()

    def _campaign(self) -> None:
        """Keep trying to lead every service we do not lead. Leading again (by a new election, or
        because our lease outlived an etcd outage) means re-reading the balancer first."""
        leading = dict.fromkeys(self._leaders, False)
        while not self._stop.is_set():
            for service, lead in self._leaders.items():
                now_leading = lead.is_leader or lead.acquire(timeout=0)
                if now_leading and not leading[service]:
                    log.info("leading %s as %s", service, self.cfg.holder)
                    with self._cond:
                        self._fresh.add(service)
                        self._dirty.setdefault(service, time.monotonic())
                        self._cond.notify_all()
                elif leading[service] and not now_leading:
                    log.warning("no longer leading %s (lease may have expired); standing by", service)
                leading[service] = now_leading
                metrics.LEADER.labels(service).set(1 if now_leading else 0)
            self._stop.wait(0.25)

    def _apply_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                timeout = self.cfg.round_s if self._nginx_due is None else \
                    max(0.0, min(self.cfg.round_s, self._nginx_due - time.monotonic()))
                self._cond.wait_for(lambda: bool(self._dirty) or self._stop.is_set(), timeout=timeout)
                dirty, self._dirty = self._dirty, {}
                members = {s: dict(m) for s, m in self.view.members.items()}
                unknown = {s: set(u) for s, u in self.view.unknown.items()}
                synced = self.view.synced
            if not synced:
                continue  # no snapshot yet: applying an empty view would empty the balancers
            decisions: list[Decision] = []
            self._nginx_due = None
            recheck = time.monotonic() - self._haproxy_checked > self.cfg.recheck_s
            if recheck:
                self._haproxy_checked = time.monotonic()
            for service in self.cfg.services:
                if not self.leads(service):
                    continue
                since = dirty.get(service) or self._pending_since.pop(service, None)
                if self.haproxy is not None:
                    decisions += self._haproxy_round(service, members[service], since, recheck, unknown[service])
                if self.nginx is not None:
                    decisions += self._nginx_round(service, members[service], since, unknown[service])
            if decisions:
                self.publish(decisions)

    # -- HAProxy ------------------------------------------------------------------------------
    def _haproxy_round(self, service: str, want: dict[str, Member], since: float | None,
                       recheck: bool = False, unknown: AbstractSet[str] = frozenset()) -> list[Decision]:
        assert self.haproxy is not None
        if recheck and service not in self._fresh:
            # HAProxy restarted (servers gone) or someone deleted one: re-add. Presence only: a weight
            # the weight adapter set at runtime is not "corrected" back to the registry's.
            try:
                actual = self.haproxy.servers(service)
            except ActuatorError:
                actual = None
                self._fresh.add(service)
            if actual is not None:
                applied = self._haproxy_applied[service]
                for name in [n for n in applied if n not in actual]:
                    del applied[name]
                for name, member in _haproxy_members(actual).items():
                    applied.setdefault(name, member)
        if service in self._fresh:
            try:
                self._haproxy_applied[service] = _haproxy_members(self.haproxy.servers(service))
                self._fresh.discard(service)
            except ActuatorError as exc:
                log.warning("HAProxy backend %s unreadable (%s); will retry", service, exc)
                return []
        applied = self._haproxy_applied[service]
        desired = {server_name(i): m.model_copy(update={"instance": server_name(i)}) for i, m in want.items()}
        for name in map(server_name, unknown):  # an invalid value: keep what HAProxy has for that key
            if name in applied and name not in desired:
                desired[name] = applied[name]
        out = []
        for change in diff(applied, desired):
            key = ("haproxy", service, change.instance)
            if change.action != "remove" and key in self._failed and self._failed[key] == change.after:
                continue  # failed with this very value already; retried when the registry changes it
            try:
                done = self._haproxy_apply(service, change)
            except ActuatorError as exc:
                self._failed[key] = change.after
                out.append(self._decision("haproxy", service, change, f"failed: {exc}"))
                self.stats.failed += 1
                metrics.CHANGES.labels("haproxy", change.action, "failed").inc()
                log.error("HAProxy %s %s/%s failed: %s", change.action, service, change.instance, exc)
                if "cannot reach" in str(exc):
                    self._fresh.add(service)
                    break
                continue
            if not done:
                continue  # a delete still waiting for connections to end
            self._failed.pop(key, None)
            if change.after is None:
                applied.pop(change.instance, None)
            else:
                applied[change.instance] = change.after
            self._record_applied("haproxy", service, change, since)
            out.append(self._decision("haproxy", service, change, "applied"))
        metrics.MEMBERS.labels("haproxy", service).set(len(applied))
        return out

    def _haproxy_apply(self, service: str, c: Change) -> bool:
        assert self.haproxy is not None
        if c.action == "add_server":
            assert c.after is not None
            self.haproxy.add_server(service, c.instance, c.after.address, c.after.port, haproxy_weight(c.after.weight),
                                    check_inter_ms=self.cfg.check_inter_ms)
        elif c.action == "set_weight":
            assert c.after is not None
            self.haproxy.set_weight(service, c.instance, haproxy_weight(c.after.weight))
        elif c.action in ("undrain", "drain", "maint"):
            self.haproxy.set_server_state(service, c.instance, {"undrain": "ready"}.get(c.action, c.action))
        elif c.action == "remove":
            key = (service, c.instance)
            first = self._pending_del.setdefault(key, time.monotonic())
            force = time.monotonic() - first > self.cfg.del_timeout_s
            if not self.haproxy.del_server(service, c.instance, force=force):
                return False
            self._pending_del.pop(key, None)
        return True

    # -- nginx --------------------------------------------------------------------------------
    def _nginx_round(self, service: str, want: dict[str, Member], since: float | None,
                     unknown: AbstractSet[str] = frozenset()) -> list[Decision]:
        assert self.nginx is not None
        before = self._nginx_applied[service]
        if before is None and unknown:  # first render: keep the servers the file has for invalid keys
            before = self._nginx_file_members(service)
        for name in unknown:
            if before is not None and name in before and name not in want:
                want = {**want, name: before[name]}
        if before == want:
            return []
        due = self._nginx_last + self.cfg.nginx_min_interval_s
        if time.monotonic() < due:  # coalesce a burst into one reload: the loop comes back at `due`
            self._nginx_due = due if self._nginx_due is None else min(self._nginx_due, due)
            if since is not None:
                self._pending_since.setdefault(service, since)
            return []
        text = render_nginx_upstreams({service: want})
        if self._nginx_rejected.get(service) == text:
            return []
        changes = diff(before or {}, want) if before is not None else \
            [Change(action="add_server", instance=i, before=None, after=m) for i, m in want.items()]
        self._nginx_last = time.monotonic()
        try:
            self.nginx.apply(service, text)
        except NginxError as exc:
            log.error("nginx: %s", exc)
            if not exc.rejected:  # nginx down or restarting: the same render is tried again shortly
                metrics.NGINX_RELOADS.labels("reload_failed").inc()
                self._nginx_last = time.monotonic() + self.cfg.nginx_retry_s
                self._nginx_due = self._nginx_last + self.cfg.nginx_min_interval_s
                return []
            self._nginx_rejected[service] = text  # retried once the registry changes the membership
            self.stats.nginx_rejected += 1
            metrics.NGINX_RELOADS.labels("rejected").inc()
            return [self._decision("nginx", service, c, f"failed: {exc}"[:500]) for c in changes]
        self._nginx_rejected.pop(service, None)
        self._nginx_applied[service] = dict(want)
        self.stats.nginx_reloads += 1
        metrics.NGINX_RELOADS.labels("applied").inc()
        metrics.MEMBERS.labels("nginx", service).set(len(want))
        out = []
        for c in changes:
            self._record_applied("nginx", service, c, since)
            out.append(self._decision("nginx", service, c, "applied"))
        return out

    def _nginx_file_members(self, service: str) -> dict[str, Member] | None:
        """The servers the current upstream file has (its comments name the instances), or None."""
        assert self.nginx is not None
        text = self.nginx.current(service)
        if text is None:
            return None
        out: dict[str, Member] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] == "server" and parts[-2] == "#" and ":" in parts[1]:
                host, port = parts[1].rsplit(":", 1)
                weight = int(parts[2].removeprefix("weight=").rstrip(";")) if parts[2].startswith("weight=") else 1
                out[parts[-1]] = Member(instance=parts[-1], address=host, port=int(port), weight=weight,
                                        state="draining" if "down;" in parts else "ready")
        return out

    # -- records ------------------------------------------------------------------------------
    def _record_applied(self, actuator: str, service: str, c: Change, since: float | None) -> None:
        now = time.monotonic()
        self.stats.applied += 1
        self.stats.applied_at[(actuator, service, c.instance)] = now
        metrics.CHANGES.labels(actuator, c.action, "applied").inc()
        if since is not None:
            metrics.APPLY_LAG.labels(actuator).observe(now - since)

    def _decision(self, actuator: str, service: str, c: Change, outcome: str) -> Decision:
        m = c.after or c.before
        state = m.state if m is not None else "?"
        return Decision(ts=int(time.time() * 1000), service=service, actuator=actuator,
                        target=f"{service}/{c.instance}", action=c.action,
                        before=float(c.before.weight) if c.before is not None else None,
                        after=float(c.after.weight) if c.after is not None else 0.0,
                        reason=f"registry: {c.instance} {'gone' if c.after is None else state} "
                               f"(revision {self.view.revision})",
                        prediction_ref="registry", outcome=outcome)


def _haproxy_members(servers: dict[str, tuple[str, int, int, int]]) -> dict[str, Member]:
    """HAProxy's servers as members: admin bit 0x01 (maintenance) = drained, 0x08 (drain) = draining."""
    return {name: Member(instance=name, address=addr, port=port, weight=weight,
                         state="drained" if admin & 0x01 else "draining" if admin & 0x08 else "ready")
            for name, (addr, port, weight, admin) in servers.items()}
