"""The service registry against a real etcd 3.4: the stack's (a unique prefix per test) and, for the
tests that stop etcd or compact its history, one of our own on free ports."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from infra.benches.registry_rig import wait_until
from infra.core.service_registry import (
    InstanceRecord,
    Leadership,
    Registry,
    WatchEvent,
    instance_key,
)
from lb_adapters.policies.membership import apply_change, membership_from_entries
from tests.integration.etcd_server import EtcdServer

STACK_ETCD = "http://127.0.0.1:12379"


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stack's etcd when it is up; otherwise one of our own (still a real etcd)."""
    try:
        healthy = httpx.get(f"{STACK_ETCD}/health", timeout=2).json().get("health") == "true"
    except httpx.HTTPError:
        healthy = False
    if healthy:
        yield STACK_ETCD
        return
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def registry(etcd_url: str) -> Iterator[Registry]:
    reg = Registry(etcd_url, f"/fs-test-{uuid.uuid4().hex[:10]}")
    try:
        yield reg
    finally:
        reg._post("/kv/deleterange", {"key": _b64(reg.prefix + "/"), "range_end": _b64(reg.prefix + "0")})
        reg.close()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    try:
        yield server
    finally:
        server.stop()


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def put_raw(reg: Registry, service: str, instance: str, value: bytes) -> None:
    reg._post("/kv/put", {"key": _b64(instance_key(reg.prefix, service, instance)), "value": _b64(value)})


def record(port: int, **kw: object) -> InstanceRecord:
    return InstanceRecord(address="127.0.0.1", port=port, started_at=int(time.time() * 1000), **kw)


class Collector:
    """Runs `registry.watch(...)` on a thread and keeps every event."""

    def __init__(self, reg: Registry, **kw: object) -> None:
        self.events: list[WatchEvent] = []
        self.thread = threading.Thread(target=self._run, args=(reg, kw), daemon=True)
        self.thread.start()

    def _run(self, reg: Registry, kw: dict[str, object]) -> None:
        for event in reg.watch(**kw):  # type: ignore[arg-type]
            self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


# -- leases --------------------------------------------------------------------------------------------

def test_keepalive_holds_the_key_past_its_ttl_and_a_stopped_keepalive_lets_it_expire(registry: Registry) -> None:
    lease = registry.register("web", "a", record(8001), ttl_s=2)
    time.sleep(2 * 2 + 1)  # two TTLs: only the keepalive keeps it
    entry = registry.get("web", "a")
    assert entry is not None and entry.lease == lease.lease_id and lease.alive
    lease.abandon()  # like a SIGKILLed instance: no revoke, no more renewals
    wait_until("the abandoned key to expire", lambda: registry.get("web", "a") is None, 2 + 3)


def test_revoke_removes_the_key_at_once(registry: Registry) -> None:
    lease = registry.register("web", "a", record(8001), ttl_s=30)
    lease.revoke()
    assert registry.get("web", "a") is None and not lease.alive


def test_on_lost_is_called_when_etcd_says_the_lease_is_gone(registry: Registry) -> None:
    lost: list[int] = []
    lease = registry.register("web", "a", record(8001), ttl_s=2, on_lost=lambda le: lost.append(le.lease_id))
    registry._post("/kv/lease/revoke", {"ID": lease.lease_id})  # someone else revoked it
    wait_until("on_lost", lambda: bool(lost), 5)
    assert lost == [lease.lease_id] and not lease.alive


# -- compare-and-set -----------------------------------------------------------------------------------

def test_a_second_writer_with_a_stale_mod_revision_loses(registry: Registry) -> None:
    lease = registry.register("web", "a", record(8001), ttl_s=30)
    seen = registry.get("web", "a")
    assert seen is not None
    assert registry.set_state("web", "a", "draining", seen.mod_revision)
    assert not registry.set_state("web", "a", "ready", seen.mod_revision)  # the other controller's stale view
    assert not registry.set_weight("web", "a", 7, seen.mod_revision)
    now = registry.get("web", "a")
    assert now is not None and now.record is not None
    assert now.record.state == "draining" and now.record.metadata["set_by"] == "controller"
    assert now.lease == lease.lease_id  # the state change kept the key under the instance's lease
    assert registry.set_weight("web", "a", 7, now.mod_revision)
    assert not registry.deregister("web", "a", expect_mod_revision=now.mod_revision)
    assert registry.deregister("web", "a") and not registry.deregister("web", "a")
    lease.revoke()


# -- watch ---------------------------------------------------------------------------------------------

def test_watch_starts_with_a_snapshot_then_reports_puts_deletes_and_garbage(registry: Registry) -> None:
    registry.register("web", "a", record(8001), ttl_s=30)
    watch = Collector(registry, service="web")
    wait_until("the initial resync", lambda: watch.kinds() == ["resync"], 5)
    first = watch.events[0]
    assert first.snapshot is not None and [e.instance for e in first.snapshot.entries] == ["a"]
    b = registry.register("web", "b", record(8002), ttl_s=30)
    registry.register("other", "x", record(8003), ttl_s=30)  # another service: not in this watch
    put_raw(registry, "web", "bad", b'{"address": "127.0.0.1", "port": 99999, "started_at": 1}')
    put_raw(registry, "web", "a", b"garbage over a valid record")
    b.revoke()
    wait_until("5 watch events", lambda: len(watch.events) >= 5, 5)
    assert watch.kinds() == ["resync", "put", "put", "put", "delete"]
    membership, rejects = membership_from_entries(first.snapshot.entries)
    for event in watch.events[1:]:
        assert event.entry is not None and event.kind in ("put", "delete")
        membership, bad = apply_change(membership, event.kind, event.entry)
        rejects += [bad] if bad else []
    assert list(membership["web"]) == ["a"]  # the garbage write did not remove a
    assert sorted(r.instance for r in rejects) == ["a", "bad"]
    assert any("port" in r.reason for r in rejects) and any("not JSON" in r.reason for r in rejects)


def test_watch_resyncs_from_a_compacted_revision(own_etcd: EtcdServer) -> None:
    reg = Registry(own_etcd.url, "/fs")
    try:
        reg.register("web", "a", record(8001), ttl_s=30)
        old = reg.revision()
        for port in range(8002, 8006):
            reg.register("web", f"i{port}", record(port), ttl_s=30)
        reg._post("/kv/compaction", {"revision": reg.revision(), "physical": True})
        watch = Collector(reg, service="web", start_revision=old)
        wait_until("a first watch event", lambda: len(watch.events) >= 1, 5)
        event = watch.events[0]
        assert event.kind == "resync" and "compacted" in event.reason and event.snapshot is not None
        assert len(event.snapshot.entries) == 5
        reg.register("web", "late", record(8010), ttl_s=30)
        wait_until("a second watch event", lambda: len(watch.events) >= 2, 5)
        assert watch.events[1].kind == "put" and watch.events[1].entry is not None
        assert watch.events[1].entry.instance == "late"
    finally:
        reg.close()


def test_watch_reports_a_lost_etcd_and_resyncs_when_it_is_back(own_etcd: EtcdServer) -> None:
    reg = Registry(own_etcd.url, "/fs", timeout_s=1.0)
    writer = Registry(own_etcd.url, "/fs", timeout_s=1.0)
    try:
        writer.register("web", "a", record(8001), ttl_s=30)
        watch = Collector(reg, service="web", retry_s=0.2)
        wait_until("the initial resync", lambda: watch.kinds() == ["resync"], 5)
        own_etcd.stop()
        wait_until("a lost event", lambda: "lost" in watch.kinds(), 10)
        own_etcd.start()
        wait_until("a resync after etcd is back", lambda: len(watch.events) >= 3 and watch.kinds()[-1] == "resync", 20)
        assert watch.kinds() == ["resync", "lost", "resync"]
        assert [e.instance for e in watch.events[-1].snapshot.entries] == ["a"]  # type: ignore[union-attr]
        writer.register("web", "b", record(8002), ttl_s=30)
        wait_until("a put after the resync", lambda: watch.kinds()[-1] == "put", 5)
    finally:
        reg.close()
        writer.close()
    watch.thread.join(5)
    assert not watch.thread.is_alive()  # close() ends the watch


def test_garbage_values_are_listed_with_their_error_and_ignored(registry: Registry) -> None:
    registry.register("web", "a", record(8001), ttl_s=30)
    put_raw(registry, "web", "nojson", b"\x00\x01 not json")
    put_raw(registry, "web", "noport", b'{"address": "127.0.0.1", "started_at": 1}')
    stray = instance_key(registry.prefix, "web", "a") + "/deeper"  # not an instance key at all
    registry._post("/kv/put", {"key": _b64(stray), "value": _b64(b"{}")})
    entries = registry.list("web")
    membership, rejects = membership_from_entries(entries)
    assert sorted(e.instance for e in entries) == ["a", "nojson", "noport"]
    assert list(membership["web"]) == ["a"]
    assert {r.instance: r.reason.split(":")[0] for r in rejects} == {"nojson": "not JSON", "noport": "invalid record"}


# -- leadership ----------------------------------------------------------------------------------------

class Sampler:
    """Samples both holders' beliefs; whenever one believes it leads (before and after reading the
    key), the leader key must be under its lease (the fencing check)."""

    def __init__(self, holders: list[Leadership]) -> None:
        self.holders, self.both, self.fence_violations, self.samples = holders, 0, 0, 0
        self.leaders_seen: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            before = [h.is_leader for h in self.holders]
            current = self.holders[0].current_holder()
            after = [h.is_leader for h in self.holders]
            self.samples += 1
            if sum(before) > 1 or sum(after) > 1:
                self.both += 1
            for h, b, a in zip(self.holders, before, after, strict=True):
                if b and a:
                    if current is None or current[1] != h.lease_id:
                        self.fence_violations += 1
                    if not self.leaders_seen or self.leaders_seen[-1] != h.holder:
                        self.leaders_seen.append(h.holder)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


def test_one_leader_at_a_time_and_the_standby_takes_over_within_the_ttl(registry: Registry) -> None:
    ttl = 2
    first = Leadership(registry, "web", "first", ttl_s=ttl, poll_s=0.1)
    second = Leadership(registry, "web", "second", ttl_s=ttl, poll_s=0.1)
    assert first.acquire(timeout=5)
    sampler = Sampler([first, second])
    standby = threading.Thread(target=second.acquire, kwargs={"timeout": 30}, daemon=True)
    standby.start()
    time.sleep(2 * ttl)  # the leader renews; the standby keeps waiting
    assert first.is_leader and not second.is_leader and first.check()
    first.abandon()  # the leader stops renewing, as if it had died
    died = time.monotonic()
    wait_until("the standby to lead", lambda: second.is_leader, ttl + 3)
    took_over_s = time.monotonic() - died
    assert second.check() and not first.is_leader
    wait_until("the sampler to see the new leader", lambda: sampler.leaders_seen[-1:] == ["second"], 3)
    sampler.stop()
    print(f"standby took over {took_over_s:.2f} s after the leader stopped renewing (ttl {ttl} s)")
    assert sampler.samples > 50 and sampler.both == 0 and sampler.fence_violations == 0
    assert sampler.leaders_seen == ["first", "second"]
    second.resign()
    assert second.current_holder() is None


def test_a_deposed_leader_cannot_write_through_its_fence(registry: Registry) -> None:
    registry.register("web", "a", record(8001), ttl_s=30)
    old = Leadership(registry, "web", "old", ttl_s=2, poll_s=0.1)
    assert old.acquire(timeout=5)
    entry = registry.get("web", "a")
    assert entry is not None and registry.set_weight("web", "a", 50, entry.mod_revision, leader=old)
    old.abandon()
    new = Leadership(registry, "web", "new", ttl_s=2, poll_s=0.1)
    assert new.acquire(timeout=10)
    entry = registry.get("web", "a")
    assert entry is not None
    assert not registry.set_state("web", "a", "draining", entry.mod_revision, leader=old)
    assert registry.set_state("web", "a", "draining", entry.mod_revision, leader=new)
    new.resign()


@contextmanager
def child_process(script: str, registry: Registry, ttl: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Runs `script` (argv: endpoint, prefix, ttl) until it prints `<word> <lease id>`; kills it at the end."""
    child = subprocess.Popen([sys.executable, "-c", script, registry.endpoint, registry.prefix, str(ttl)],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert len(line.split()) == 2, f"child said {line!r}"
        yield child, int(line.split()[1])
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(5)


LEADER_SCRIPT = """
import sys, time
from infra.core.service_registry import Leadership, Registry
lead = Leadership(Registry(sys.argv[1], sys.argv[2]), "web", "child", ttl_s=int(sys.argv[3]))
assert lead.acquire(timeout=10)
print("leader", lead.lease_id, flush=True)
time.sleep(600)
"""


def test_the_standby_takes_over_when_the_leader_process_is_killed(registry: Registry) -> None:
    ttl = 2
    with child_process(LEADER_SCRIPT, registry, ttl) as (child, lease_id):
        standby = Leadership(registry, "web", "standby", ttl_s=ttl, poll_s=0.1)
        assert standby.current_holder() == ("child", lease_id)
        assert not standby.acquire(timeout=1)  # the child leads
        child.kill()  # SIGKILL: no resign, no revoke
        child.wait(5)
        assert standby.acquire(timeout=ttl + 3)
        assert standby.check() and standby.current_holder() == ("standby", standby.lease_id)
        standby.resign()


INSTANCE_SCRIPT = """
import sys, time
from infra.core.service_registry import InstanceRecord, Registry
reg = Registry(sys.argv[1], sys.argv[2])
record = InstanceRecord(address="127.0.0.1", port=8080, started_at=0)
lease = reg.register("web", "child", record, ttl_s=int(sys.argv[3]))
print("registered", lease.lease_id, flush=True)
time.sleep(600)
"""


def test_a_sigkilled_instance_leaves_the_registry_within_its_ttl(registry: Registry) -> None:
    ttl = 2
    with child_process(INSTANCE_SCRIPT, registry, ttl) as (child, lease_id):
        time.sleep(2 * ttl)  # its keepalive thread holds the key past the TTL
        entry = registry.get("web", "child")
        assert entry is not None and entry.lease == lease_id
        child.kill()
        child.wait(5)
        wait_until("the killed instance's key to expire", lambda: registry.get("web", "child") is None, ttl + 2)
