"""Service registry on etcd 3.4: one key per instance under a lease, compare-and-set state changes,
a watch that says when to resync, and a leadership election per service.

Layout (all under a configurable prefix, `/foresight` by default):

- `<prefix>/services/<service>/instances/<instance>` -> JSON `InstanceRecord`, attached to the
  instance's lease: the key disappears when the instance stops renewing it.
- `<prefix>/leaders/<service>[/<role>]` -> JSON `{"holder": ..., "acquired_at": ...}`, created only if
  absent, under the leader's lease (one election per service and kind of controller).

The client is etcd3gw (etcd's JSON gateway over HTTP): no grpcio/protobuf of its own, so it cannot
disturb the versions Ray pins. Neither it nor etcd renews a lease, so the keepalive threads are ours.
"""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception
from etcd3gw.utils import _decode, _encode, _increment_last_byte
from pydantic import BaseModel, ConfigDict, Field, ValidationError

InstanceState = Literal["ready", "draining", "drained"]
INSTANCE_STATES: tuple[InstanceState, ...] = ("ready", "draining", "drained")


class RegistryError(RuntimeError):
    """etcd could not be reached or answered an error; the message says which endpoint."""


REPLACE = "replace"  # metadata key: a replacement was asked for (value: who asked)
HOLD = "hold_share"  # metadata key: a drain refused for capacity, in force (value: the share of the load kept)


class InstanceRecord(BaseModel):
    """The JSON value of an instance key."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1, description="Host or IP the balancers connect to.")
    port: int = Field(ge=1, le=65535)
    state: InstanceState = "ready"
    weight: int = Field(100, ge=0, le=256, description="Balancer weight (HAProxy's 0..256).")
    started_at: int = Field(ge=0, description="Epoch milliseconds when the instance started.")
    version: str = ""
    metadata: dict[str, str] = Field(default_factory=dict, description="Free-form; `set_by` says who set `state`; "
                                     "`replace` (who asked) that the instance is to be replaced before it is drained; "
                                     "`hold_share` the share of the load a drain refused for capacity leaves it.")

    @property
    def replacement_requested(self) -> bool:
        """Still serving, but out of the count: its replacement is (being) started, so that it can be drained."""
        return REPLACE in self.metadata

    @property
    def hold_share(self) -> float | None:
        """The share of the service's load a held instance keeps (its drain was refused because the others
        could not carry the load): the weight adapter caps its weight to that. None: not held."""
        try:
            share = float(self.metadata[HOLD])
        except (KeyError, ValueError):
            return None
        return share if 0.0 <= share <= 1.0 else None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def _check_name(kind: str, name: str) -> str:
    if not name or "/" in name or name.strip() != name:
        raise ValueError(f"{kind} name {name!r}: must be non-empty, without '/' or surrounding spaces")
    return name


def normalise_prefix(prefix: str) -> str:
    """`foresight/` -> `/foresight`: one leading slash, none trailing."""
    stripped = prefix.strip().strip("/")
    if not stripped:
        raise ValueError("registry prefix must not be empty (e.g. /foresight)")
    return "/" + stripped


def services_prefix(prefix: str) -> str:
    return f"{normalise_prefix(prefix)}/services/"


def service_prefix(prefix: str, service: str) -> str:
    return f"{normalise_prefix(prefix)}/services/{_check_name('service', service)}/instances/"


def instance_key(prefix: str, service: str, instance: str) -> str:
    """`<prefix>/services/<service>/instances/<instance>`."""
    return service_prefix(prefix, service) + _check_name("instance", instance)


def parse_instance_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(service, instance) of an instance key, None for any other key under the prefix."""
    head = services_prefix(prefix)
    if not key.startswith(head):
        return None
    parts = key[len(head):].split("/")
    if len(parts) != 3 or parts[1] != "instances" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


def leader_key(prefix: str, service: str, role: str = "") -> str:
    """`<prefix>/leaders/<service>`, or `<prefix>/leaders/<service>/<role>`: one election per kind of
    controller (weights, membership sync, ...), so different controllers do not lock each other out."""
    key = f"{normalise_prefix(prefix)}/leaders/{_check_name('service', service)}"
    return f"{key}/{_check_name('role', role)}" if role else key


def parse_record(raw: bytes) -> tuple[InstanceRecord | None, str | None]:
    """(record, None) for a valid value, (None, why) otherwise: never raises on bad input."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(data, dict):
        return None, f"not a JSON object: {type(data).__name__}"
    try:
        return InstanceRecord.model_validate(data), None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        return None, f"invalid record: {problems}"


@dataclass(frozen=True)
class RegistryEntry:
    """One instance key as read from etcd; `record` is None when the value is invalid (`error` says why)
    or when the entry reports a deletion."""

    service: str
    instance: str
    record: InstanceRecord | None
    error: str | None
    mod_revision: int
    lease: int = 0

    @property
    def valid(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class Snapshot:
    """Every instance entry (of one service, or all) at one store revision."""

    entries: list[RegistryEntry]
    revision: int


@dataclass(frozen=True)
class LeaderInfo:
    """One leader key as read: the service, the role ("" for the service-wide key), who holds it."""

    service: str
    role: str
    holder: str
    lease: int
    mod_revision: int


def _holder(kv: dict[str, Any]) -> str:
    try:
        return str(json.loads(_decode(kv["value"]))["holder"])
    except (ValueError, KeyError, TypeError):
        return "?"


WatchKind = Literal["put", "delete", "resync", "lost"]


@dataclass(frozen=True)
class WatchEvent:
    """`put`/`delete`: one key changed (`entry`). `resync`: replace everything with `snapshot` (first
    event, after a reconnect, after a compacted revision). `lost`: etcd unreachable; keep what you have."""

    kind: WatchKind
    revision: int
    entry: RegistryEntry | None = None
    snapshot: Snapshot | None = None
    reason: str = ""


def _int(value: Any) -> int:
    """The gateway sends int64 fields as strings and omits zeros."""
    return int(value) if value not in (None, "") else 0


def _entry_from_kv(prefix: str, kv: dict[str, Any], deleted: bool = False) -> RegistryEntry | None:
    key = _decode(kv["key"]).decode("utf-8", errors="replace")
    names = parse_instance_key(prefix, key)
    if names is None:
        return None
    mod_revision, lease = _int(kv.get("mod_revision")), _int(kv.get("lease"))
    if deleted:
        return RegistryEntry(names[0], names[1], None, None, mod_revision, lease)
    record, error = parse_record(_decode(kv.get("value", "")))
    return RegistryEntry(names[0], names[1], record, error, mod_revision, lease)


def _client(endpoint: str, timeout_s: float) -> Etcd3Client:
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not url.hostname or not url.port:
        raise ValueError(f"etcd endpoint {endpoint!r}: expected http://host:port")
    # /v3/ is the gateway path of etcd >= 3.4; naming it skips a /version round trip per client.
    return Etcd3Client(host=url.hostname, port=url.port, protocol=url.scheme, timeout=timeout_s, api_path="/v3/")


class _Keepalive:
    """Renews one lease every `ttl/3` on its own thread (and its own HTTP session).

    `deadline` is when the lease may have expired at the latest, measured from the moment the last
    successful renewal was *sent* (etcd counts from when it received it, which is later)."""

    def __init__(self, endpoint: str, timeout_s: float, lease_id: int, ttl_s: int,
                 on_lost: Callable[[], None] | None, name: str, granted_at: float | None = None) -> None:
        self.lease_id, self.ttl_s = lease_id, ttl_s
        self._client = _client(endpoint, min(timeout_s, max(ttl_s / 3, 0.5)))
        self._on_lost = on_lost
        self._stop = threading.Event()
        self.lost = False
        self.deadline = (time.monotonic() if granted_at is None else granted_at) + ttl_s
        self.renewals = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = max(self.ttl_s / 3.0, 0.2)
        while not self._stop.wait(interval if not self.failures else min(interval, 0.5)):
            sent = time.monotonic()
            try:
                result = self._client.post(self._client.get_url("/lease/keepalive"), json={"ID": self.lease_id})
                ttl = _int(result.get("result", {}).get("TTL"))
            except (Etcd3Exception, requests.RequestException, ValueError):
                self.failures += 1  # etcd unreachable: keep trying; the deadline tells whether we may still hold it
                continue
            if self._stop.is_set():
                return
            if ttl <= 0:
                self.lost = True
                if self._on_lost is not None:
                    self._on_lost()
                return
            self.failures = 0
            self.renewals += 1
            self.deadline = sent + ttl

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._client.timeout or 3.0)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


class InstanceLease:
    """An instance's registration: its lease, renewed by a keepalive thread until `revoke()`."""

    def __init__(self, registry: Registry, service: str, instance: str, lease_id: int, ttl_s: int,
                 on_lost: Callable[[InstanceLease], None] | None) -> None:
        self.registry, self.service, self.instance = registry, service, instance
        self.lease_id, self.ttl_s = lease_id, ttl_s
        self.key = instance_key(registry.prefix, service, instance)
        callback = (lambda: on_lost(self)) if on_lost is not None else None
        self._keepalive = _Keepalive(registry.endpoint, registry.timeout_s, lease_id, ttl_s, callback,
                                     name=f"lease-{service}-{instance}")

    @property
    def alive(self) -> bool:
        """True while the keepalive runs and etcd has not said the lease is gone."""
        return self._keepalive.running and not self._keepalive.lost

    def revoke(self) -> None:
        """Stop renewing and revoke: the key goes at once (a clean stop)."""
        self._keepalive.stop()
        self.registry._post("/kv/lease/revoke", {"ID": self.lease_id})

    def abandon(self) -> None:
        """Stop renewing without revoking: what a crash does; the key expires after the TTL."""
        self._keepalive.stop()


class Registry:
    """Reads and changes the instance keys of one prefix on one etcd endpoint."""

    def __init__(self, endpoint: str, prefix: str, timeout_s: float = 3.0) -> None:
        self.endpoint, self.prefix, self.timeout_s = endpoint, normalise_prefix(prefix), timeout_s
        self._client = _client(endpoint, timeout_s)
        self._lock = threading.Lock()
        self._streams: set[requests.Response] = set()
        self._closed = threading.Event()

    # -- plumbing ---------------------------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._lock:  # one session, used from several threads
                result: dict[str, Any] = self._client.post(self._client.get_url(path), json=payload)
            return result
        except (Etcd3Exception, requests.RequestException) as exc:
            raise RegistryError(f"etcd at {self.endpoint} ({path}): {str(exc) or type(exc).__name__}; "
                                "is etcd running? (`foresight stack status`)") from exc

    def _range(self, key: str, range_end: str | None) -> dict[str, Any]:
        payload = {"key": _encode(key.encode())}
        if range_end is not None:
            payload["range_end"] = _encode(range_end.encode())
        return self._post("/kv/range", payload)

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A raw etcd transaction (keys and values base64, as the gateway wants)."""
        return self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    def revision(self) -> int:
        return _int(self._range(self.prefix + "/", None)["header"]["revision"])

    # -- reads ------------------------------------------------------------------------------------
    def snapshot(self, service: str | None = None) -> Snapshot:
        """Every instance entry (valid or not) and the store revision they were read at."""
        start = services_prefix(self.prefix) if service is None else service_prefix(self.prefix, service)
        result = self._range(start, _increment_last_byte(start))
        entries = [e for kv in result.get("kvs", []) if (e := _entry_from_kv(self.prefix, kv)) is not None]
        return Snapshot(entries, _int(result["header"]["revision"]))

    def list(self, service: str | None = None) -> list[RegistryEntry]:
        return self.snapshot(service).entries

    def leaders(self) -> builtins.list[LeaderInfo]:
        """Every leader key: who leads which service in which role, under which lease."""
        start = f"{self.prefix}/leaders/"
        found: builtins.list[LeaderInfo] = []
        for kv in self._range(start, _increment_last_byte(start)).get("kvs", []):
            service, _, role = _decode(kv["key"]).decode("utf-8", errors="replace")[len(start):].partition("/")
            found.append(LeaderInfo(service, role, _holder(kv), _int(kv.get("lease")), _int(kv.get("mod_revision"))))
        return found

    def get(self, service: str, instance: str) -> RegistryEntry | None:
        kvs = self._range(instance_key(self.prefix, service, instance), None).get("kvs", [])
        return _entry_from_kv(self.prefix, kvs[0]) if kvs else None

    # -- writes -----------------------------------------------------------------------------------
    def grant(self, ttl_s: int) -> int:
        lease_id = _int(self._post("/lease/grant", {"TTL": int(ttl_s), "ID": 0}).get("ID"))
        if lease_id <= 0:
            raise RegistryError(f"etcd at {self.endpoint} granted no lease for TTL {ttl_s}")
        return lease_id

    def register(self, service: str, instance: str, record: InstanceRecord, ttl_s: int,
                 on_lost: Callable[[InstanceLease], None] | None = None) -> InstanceLease:
        """Put the instance's key under a new lease and keep the lease alive (every ttl/3)."""
        key = instance_key(self.prefix, service, instance)
        lease_id = self.grant(ttl_s)
        self._post("/kv/put", {"key": _encode(key.encode()), "value": _encode(record.to_json()), "lease": lease_id})
        return InstanceLease(self, service, instance, lease_id, int(ttl_s), on_lost)

    def compare_and_put(self, service: str, instance: str, record: InstanceRecord, expect_mod_revision: int,
                        leader: Leadership | None = None) -> bool:
        """Write `record` only if the key is still at `expect_mod_revision` (and, with `leader`, only
        while that leadership's lease still holds the leader key). The key keeps its lease."""
        key = _encode(instance_key(self.prefix, service, instance).encode())
        compare: list[dict[str, Any]] = [
            {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": expect_mod_revision}]
        if leader is not None:
            compare.append(leader.compare())
        put = {"request_put": {"key": key, "value": _encode(record.to_json()), "ignore_lease": True}}
        return bool(self.txn(compare, [put]).get("succeeded", False))

    def _update(self, service: str, instance: str, expect_mod_revision: int, leader: Leadership | None,
                change: Callable[[InstanceRecord], InstanceRecord]) -> bool:
        entry = self.get(service, instance)
        if entry is None or entry.mod_revision != expect_mod_revision:
            return False
        if entry.record is None:
            raise ValueError(f"{service}/{instance} holds an invalid value ({entry.error}); deregister it")
        return self.compare_and_put(service, instance, change(entry.record), expect_mod_revision, leader)

    def set_state(self, service: str, instance: str, state: InstanceState, expect_mod_revision: int,
                  set_by: str = "controller", leader: Leadership | None = None) -> bool:
        """Compare-and-set the state (recording `set_by` in metadata); False if the key changed meanwhile. Back to
        `ready`, a replacement asked for is withdrawn: the instance counts again. A hold ends with any change."""
        def change(r: InstanceRecord) -> InstanceRecord:
            meta = {k: v for k, v in r.metadata.items() if not (state == "ready" and k == REPLACE) and k != HOLD}
            return r.model_copy(update={"state": state, "metadata": {**meta, "set_by": set_by}})
        return self._update(service, instance, expect_mod_revision, leader, change)

    def request_replacement(self, service: str, instance: str, by: str | None, expect_mod_revision: int,
                            leader: Leadership | None = None) -> bool:
        """Compare-and-set the `replace` mark (`by`: who asks; None withdraws it); the pool starts a replacement
        for a marked instance and no longer counts it. False if the key changed meanwhile."""
        def change(r: InstanceRecord) -> InstanceRecord:
            meta = {k: v for k, v in r.metadata.items() if k != REPLACE}
            return r.model_copy(update={"metadata": meta if by is None else {**meta, REPLACE: by}})
        return self._update(service, instance, expect_mod_revision, leader, change)

    def set_hold(self, service: str, instance: str, share: float | None, expect_mod_revision: int,
                 leader: Leadership | None = None) -> bool:
        """Compare-and-set the hold (`share` of the load the instance keeps, 0..1; None lifts it). False if the
        key changed meanwhile."""
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"hold share {share} outside 0..1")

        def change(r: InstanceRecord) -> InstanceRecord:
            meta = {k: v for k, v in r.metadata.items() if k != HOLD}
            return r.model_copy(update={"metadata": meta if share is None else {**meta, HOLD: f"{share:g}"}})
        return self._update(service, instance, expect_mod_revision, leader, change)

    def set_weight(self, service: str, instance: str, weight: int, expect_mod_revision: int,
                   leader: Leadership | None = None) -> bool:
        """Compare-and-set the weight (0..256); False if the key changed meanwhile."""
        if not 0 <= weight <= 256:
            raise ValueError(f"weight {weight} outside 0..256")
        return self._update(service, instance, expect_mod_revision, leader,
                            lambda r: r.model_copy(update={"weight": weight}))

    def deregister(self, service: str, instance: str, expect_mod_revision: int | None = None) -> bool:
        """Delete the instance key (only at `expect_mod_revision` when given); True if it was there."""
        key = _encode(instance_key(self.prefix, service, instance).encode())
        compare = [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": expect_mod_revision}] \
            if expect_mod_revision is not None else \
            [{"key": key, "target": "CREATE", "result": "GREATER", "create_revision": 0}]
        return bool(self.txn(compare, [{"request_delete_range": {"key": key}}]).get("succeeded", False))

    # -- watch ------------------------------------------------------------------------------------
    def watch(self, service: str | None = None, start_revision: int | None = None,
              retry_s: float = 0.5) -> Iterator[WatchEvent]:
        """Instance changes as they happen, until `close()`.

        With no `start_revision` the first event is a `resync` with a full snapshot. A lost connection
        gives one `lost` event, then reconnect attempts every `retry_s`, then a `resync`; so does a
        start revision etcd has compacted away."""
        start = services_prefix(self.prefix) if service is None else service_prefix(self.prefix, service)
        end = _increment_last_byte(start)
        lost = False
        resync_reason: str | None = "initial" if start_revision is None else None
        next_revision = start_revision
        while not self._closed.is_set():
            if resync_reason is not None:
                try:
                    snap = self.snapshot(service)
                except RegistryError as exc:
                    if not lost:
                        lost = True
                        yield WatchEvent("lost", 0, reason=str(exc))
                    self._closed.wait(retry_s)
                    continue
                lost = False
                yield WatchEvent("resync", snap.revision, snapshot=snap, reason=resync_reason)
                next_revision, resync_reason = snap.revision + 1, None
            try:
                for event in self._stream(start, end, next_revision):
                    if event.kind == "resync":  # compacted or cancelled by etcd
                        resync_reason = event.reason
                        break
                    next_revision = event.revision + 1
                    yield event
                else:
                    if self._closed.is_set():
                        return
                    raise requests.ConnectionError("watch stream ended")
            except Exception as exc:
                if self._closed.is_set():
                    return  # close() cut the stream under us: whatever it raised, we are done
                if not isinstance(exc, (requests.RequestException, Etcd3Exception, ValueError, OSError)):
                    raise
                resync_reason = "reconnect"
                if not lost:
                    lost = True
                    yield WatchEvent("lost", next_revision or 0, reason=f"etcd watch at {self.endpoint}: {exc}")
                self._closed.wait(retry_s)

    def _stream(self, start: str, end: str, revision: int | None) -> Iterator[WatchEvent]:
        create: dict[str, Any] = {"key": _encode(start.encode()), "range_end": _encode(end.encode())}
        if revision is not None:
            create["start_revision"] = revision
        session = requests.Session()
        response = session.post(self._client.get_url("/watch"), json={"create_request": create},
                                stream=True, timeout=(self.timeout_s, None))
        with self._lock:
            self._streams.add(response)
        try:
            if response.status_code != 200:
                raise requests.ConnectionError(f"watch answered {response.status_code}: {response.text[:200]}")
            for message in _json_lines(response):
                if "error" in message:
                    raise requests.ConnectionError(f"watch error: {message['error']}")
                result = message.get("result", {})
                header_rev = _int(result.get("header", {}).get("revision"))
                if _int(result.get("compact_revision")):
                    yield WatchEvent("resync", header_rev,
                                     reason=f"compacted: revision {revision} < {result['compact_revision']}")
                    return
                if result.get("canceled"):
                    yield WatchEvent("resync", header_rev, reason=f"watch cancelled: {result.get('cancel_reason')}")
                    return
                for ev in result.get("events", []):
                    deleted = ev.get("type") == "DELETE"
                    entry = _entry_from_kv(self.prefix, ev["kv"], deleted=deleted)
                    if entry is not None:
                        yield WatchEvent("delete" if deleted else "put", entry.mod_revision, entry=entry)
        finally:
            with self._lock:
                self._streams.discard(response)
            response.close()
            session.close()

    def close(self) -> None:
        """End every watch of this registry (their iterators return) and the HTTP sessions."""
        self._closed.set()
        with self._lock:
            streams = list(self._streams)
        for response in streams:
            _shutdown(response)
        self._client.session.close()


def _json_lines(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The gateway's stream: one JSON object per line, yielded as each arrives (no read-ahead)."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)


def _shutdown(response: requests.Response) -> None:
    """Unblock a thread reading a streamed response: shut the socket down under it."""
    try:
        sock = response.raw._fp.fp.raw._sock  # http.client response -> socket
        sock.shutdown(2)  # the reader sees the end of the stream and closes the response itself
    except Exception:  # already closed, or another transport: close it from here
        response.close()


@dataclass
class Leadership:
    """One holder's part in the election for `service`: the leader key is created only if absent,
    under a lease this holder keeps alive. A standby polls and takes over once the key is gone
    (the leader resigned, or its lease expired within `ttl_s`).

    `is_leader` turns False as soon as the lease may have expired, even if etcd cannot be reached to
    say so, so two holders never both believe they lead; `compare()` adds the same fence to a
    transaction, and `check()` reads the key and verifies it is under our lease."""

    registry: Registry
    service: str
    holder: str
    ttl_s: int = 10
    poll_s: float = 0.25
    role: str = ""
    _keepalive: _Keepalive | None = field(default=None, init=False, repr=False)
    _lease_id: int = field(default=0, init=False)

    @property
    def key(self) -> str:
        return leader_key(self.registry.prefix, self.service, self.role)

    @property
    def lease_id(self) -> int:
        return self._lease_id

    def _try_once(self) -> bool:
        granted_at = time.monotonic()  # before the grant: etcd's expiry is later than granted_at + ttl
        lease_id = self.registry.grant(self.ttl_s)
        key = _encode(self.key.encode())
        value = json.dumps({"holder": self.holder, "acquired_at": int(time.time() * 1000)}).encode()
        result = self.registry.txn(
            [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            [{"request_put": {"key": key, "value": _encode(value), "lease": lease_id}}])
        if not result.get("succeeded"):
            self.registry._post("/kv/lease/revoke", {"ID": lease_id})
            return False
        self._lease_id = lease_id
        self._keepalive = _Keepalive(self.registry.endpoint, self.registry.timeout_s, lease_id, self.ttl_s,
                                     None, name=f"leader-{self.service}-{self.holder}", granted_at=granted_at)
        return True

    def acquire(self, timeout: float | None = None) -> bool:
        """Become leader, waiting up to `timeout` seconds (None: forever); True once leader."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            k = self._keepalive
            if k is not None and (k.lost or not k.running):
                self._keepalive = None  # that lease is gone (or abandoned): it cannot make us leader again
            if self._keepalive is not None:
                if self.is_leader:  # still ours, or renewed again after etcd was away
                    return True
            else:
                try:
                    if self._try_once():
                        return True
                except RegistryError:
                    pass  # etcd away: keep standing by
            if give_up is not None and time.monotonic() >= give_up:
                return False
            time.sleep(self.poll_s)

    @property
    def is_leader(self) -> bool:
        k = self._keepalive
        # the margin covers clock-rate differences between this host and etcd's
        return k is not None and not k.lost and time.monotonic() < k.deadline - min(0.5, self.ttl_s * 0.05)

    def compare(self) -> dict[str, Any]:
        """A transaction compare that holds only while the leader key is under our lease."""
        return {"key": _encode(self.key.encode()), "target": "LEASE", "result": "EQUAL", "lease": self._lease_id}

    def current_holder(self) -> tuple[str, int] | None:
        """(holder, lease id) of the leader key, None when nobody leads."""
        kvs = self.registry._range(self.key, None).get("kvs", [])
        return (_holder(kvs[0]), _int(kvs[0].get("lease"))) if kvs else None

    def current_holder_text(self) -> str:
        """Who leads, for messages; never raises."""
        try:
            current = self.current_holder()
        except RegistryError as exc:
            return f"etcd unreachable: {exc}"
        return "nobody leads yet" if current is None else f"held by {current[0]}"

    def check(self) -> bool:
        """Fencing check: we believe we lead AND etcd's leader key is under our lease."""
        if not self.is_leader:
            return False
        current = self.current_holder()
        return current is not None and current[1] == self._lease_id

    def abandon(self) -> None:
        """Stop renewing without resigning (what a crash does); for tests."""
        if self._keepalive is not None:
            self._keepalive.stop()

    def resign(self) -> None:
        """Give leadership up now: delete the key if it is still ours, revoke the lease."""
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is None:
            return
        keepalive.stop()
        key = _encode(self.key.encode())
        try:
            self.registry.txn([self.compare()], [{"request_delete_range": {"key": key}}])
            self.registry._post("/kv/lease/revoke", {"ID": self._lease_id})
        except RegistryError:
            pass  # etcd away: the lease expires by itself within ttl_s
