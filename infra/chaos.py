"""`foresight chaos`: crash one component at a time under a bounded replay, and count what it cost.

For each fault a service of its own gets a steady stream of access events through ingest's HTTP
endpoint (`wait=true`: counted as sent once Kafka acknowledged them). Meanwhile the component is
crashed (SIGKILL to its whole process family, as an OOM kill or a node loss would), left down a
few seconds, and restarted by the launcher. Then, once the stream worker has drained:

- events lost: sent, less what `features` (FINAL) counts for the service's instance;
- windows double-counted: windows whose `features` count exceeds the events sent into them;
- unsafe actions: decisions on `fs.decisions` during the fault that drain an instance to weight 0,
  take more instances than `max_unavailable` out of service at once, or scale a service down while its
  load (`features`) rises;
- time to recover: crash to the component answering its probe again, and crash to the first event
  sent after the restart being counted in `features` (the pipeline flowing end to end).

`pool-instance` is not a stack component: it SIGKILLs one ready instance of a pool service (as an OOM
kill would), and the pool (not the launcher) replaces it. It has recovered once the pool has the desired
number of ready instances again, HAProxy's backend lists exactly those, and a request through HAProxy's
frontend of the service answers. Requests sent through HAProxy meanwhile are counted (a note).

By default it runs on a private stack (free ports, a temp state folder) that it starts and stops,
so a shared stack is never crashed; `--this-stack` crashes the configured one instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from infra.core.db import client as clickhouse_client
from infra.core.kafka_admin import kafka_consumer
from infra.core.pool_api import PoolStatus
from infra.core.ports import free_ports
from infra.core.settings import PoolServiceSettings, Settings, load_settings
from infra.stack import probes
from infra.stack.launcher import down, pid_files, up
from infra.stack.process import ProcessRecord
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.sync.plan import server_name

Say = Callable[[str], None]
# What the pipeline needs to carry the replay; faults are crashed among these (and serving, etcd).
PIPELINE = {"kafka", "clickhouse", "ingest-http", "stream-worker"}
# What the weight controller (`foresight adapt`) acts through: serving's /v1/weights, HAProxy, the demo backends.
CONTROLLED = {"serving", "haproxy", "backend-s1", "backend-s2", "etcd"}
POOL_INSTANCE = "pool-instance"
DEFAULT_FAULTS = ["stream-worker", "clickhouse", "serving", "autoscaler", "registry-sync", POOL_INSTANCE, "etcd"]
# What a fault that is not itself a stack component needs running: the pool, and the registry sync that
# puts its instances into HAProxy (and so etcd, HAProxy and nginx).
FAULT_NEEDS = {POOL_INSTANCE: {"pool", "registry-sync"}}
MEMBERSHIP_REMOVALS = {"remove", "drain", "deregister"}
INSTANCE = "i1"
MAX_UNAVAILABLE = 1
RISE = 0.10  # load "rises" when a window holds more than 10% more requests than the window before


@dataclass
class FaultResult:
    component: str
    service: str
    sent: int
    counted: int
    lost: int
    double_counted_windows: int
    late_events: int  # events `features` saw but left out as late (past their window's lateness)
    unsafe_actions: int
    decisions: int
    recover_s: float
    flowing_s: float | None
    notes: list[str] = field(default_factory=list)
    recovered: bool = True  # False: still not back after `settle_s` (recover_s is then that wait)
    balancer_sent: int | None = None  # pool-instance: requests through HAProxy to the pool service meanwhile
    balancer_failed: int | None = None  # ... and how many of them failed (an error, a timeout)

    @property
    def ok(self) -> bool:
        return self.recovered and self.lost == 0 and self.double_counted_windows == 0 and self.unsafe_actions == 0


def _moved_ports(node: Any, next_port: Callable[[], int]) -> Any:
    """The port-bearing parts of a settings dump (`*port`, `ports`), each port replaced by a free one."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key.endswith("port") and isinstance(value, int):
                out[key] = next_port()
            elif key == "ports" and isinstance(value, list):
                out[key] = [next_port() for _ in value]
            elif isinstance(value, dict):
                moved = _moved_ports(value, next_port)
                if moved:
                    out[key] = moved
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                # a list of tables replaces the default whole: keep every item, its ports moved
                out[key] = [{**{k: v for k, v in item.items() if v is not None}, **_moved_ports(item, next_port)}
                            for item in value]
        return out
    return {}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _toml(tables: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for what `_moved_ports` returns: tables of scalars, lists and lists of tables."""
    scalars = {k: v for k, v in tables.items() if not isinstance(v, dict) and not (
        isinstance(v, list) and v and isinstance(v[0], dict))}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, value in tables.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            lines.append(_toml(value, name))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if not isinstance(v, dict)]
    return "\n".join(lines)


def private_config(folder: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A settings file that moves every port of the stack to a free block, and its state to `folder`.
    `overrides`: settings tables to set first (a list of tables, e.g. `pool.services`, replaces the default
    and gets its ports moved too; scalars are kept as given)."""
    first = free_ports(96)
    ports = iter(range(first, first + 64))
    base = Settings().model_dump(mode="json")
    for section, values in (overrides or {}).items():
        base[section] = {**base.get(section, {}), **values}
    moved = _moved_ports(base, lambda: next(ports))
    for section, values in (overrides or {}).items():
        kept = {k: v for k, v in values.items() if not isinstance(v, list | dict)}
        moved[section] = {**kept, **moved.get(section, {})}
    moved["kafka"] = {"bootstrap_servers": f"127.0.0.1:{next(ports)}", "partitions": 2}
    moved.setdefault("serving", {})["internal_ports"] = f"{first + 64}-{first + 95}"
    path = folder / "foresight.toml"
    path.write_text(f'state_dir = "{folder}"\n' + _toml(moved) + "\n")
    return path


def crash(record: ProcessRecord) -> int:
    """SIGKILL the process, its group and every descendant at once; returns how many were killed."""
    return kill_family(record.pid, group=True)


def kill_family(pid: int, group: bool = False) -> int:
    """SIGKILL `pid` and every descendant (and its process group, when it leads one: a stack component
    does, a pool instance shares its pool's); returns how many were killed."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(family, timeout=10)
    return len(family)


class Replay(threading.Thread):
    """Sends `rate` events a second of one service to ingest HTTP until stopped; counts per window."""

    def __init__(self, s: Settings, service: str, rate: float, window_s: int,
                 instances: tuple[tuple[str, float], ...] = ((INSTANCE, 5.0),)) -> None:
        super().__init__(daemon=True, name=f"replay-{service}")
        self.instances = instances
        self.url = f"http://{s.ingest.http_host}:{s.ingest.http_port}/v1/logs"
        token = s.ingest_token
        self.headers = {"Content-Type": "application/x-ndjson",
                        **({"Authorization": f"Bearer {token}"} if token else {})}
        self.service, self.rate, self.window_s = service, rate, window_s
        self.sent_by_window: Counter[int] = Counter()
        self.refused = 0
        self.stop = threading.Event()
        self.marks: list[tuple[float, int]] = []  # (wall time, ms timestamp) of each acknowledged batch

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                started = time.time()
                ts = int(started * 1000)
                count = max(1, round(self.rate / 4))
                body = "".join(json.dumps({"time": ts + i, "method": "GET", "path": "/chaos", "status": 200,
                                           "latency_ms": self.instances[i % len(self.instances)][1], "bytes": 100,
                                           "service": self.service,
                                           "instance": self.instances[i % len(self.instances)][0]}) + "\n"
                               for i in range(count))
                try:
                    resp = http.post(self.url, params={"format": "json", "wait": "true"}, content=body,
                                     headers=self.headers)
                    accepted = resp.json().get("accepted", 0) if resp.status_code == 200 else 0
                except (httpx.HTTPError, ValueError):
                    accepted = 0
                if accepted:
                    for i in range(accepted):
                        self.sent_by_window[(ts + i) // 1000 // self.window_s * self.window_s] += 1
                    self.marks.append((started, ts))
                else:
                    self.refused += 1
                self.stop.wait(max(0.0, 0.25 - (time.time() - started)))

    @property
    def sent(self) -> int:
        return sum(self.sent_by_window.values())

    def flush(self, lateness_s: float) -> int:
        """After the replay: one more event a window and the lateness later, so the worker's clock for this key's
        partition passes the last window even while other partitions keep it busy; returns that event's window."""
        time.sleep(self.window_s + lateness_s + 1)
        ts = int(time.time() * 1000)
        line = json.dumps({"time": ts, "method": "GET", "path": "/flush", "status": 200, "latency_ms": 5,
                           "bytes": 1, "service": self.service, "instance": self.instances[0][0]}) + "\n"
        httpx.post(self.url, params={"format": "json", "wait": "true"}, content=line, headers=self.headers, timeout=10)
        return ts // 1000 // self.window_s * self.window_s


def late_events(s: Settings, service: str) -> int:
    cl = clickhouse_client(s.clickhouse, s.clickhouse.database)
    try:
        rows = cl.execute(f"SELECT sum(late_events) FROM {s.clickhouse.database}.features FINAL "
                          "WHERE service = %(s)s AND instance = %(i)s", {"s": service, "i": INSTANCE})
    finally:
        cl.disconnect()
    return int(rows[0][0] or 0) if rows else 0


def counted_by_window(s: Settings, service: str, before: int | None = None) -> dict[int, int]:
    cl = clickhouse_client(s.clickhouse, s.clickhouse.database)
    try:
        rows = cl.execute(f"SELECT toUInt32(window_start), sum(requests) FROM {s.clickhouse.database}.features FINAL "
                          "WHERE service = %(s)s AND instance = %(i)s GROUP BY window_start",
                          {"s": service, "i": INSTANCE})
    finally:
        cl.disconnect()
    return {int(w): int(n) for w, n in rows if before is None or int(w) < before}


def wait_counted(s: Settings, service: str, expected: int, timeout_s: float, before: int) -> dict[int, int]:
    """Windows of `service` (before the flush window) once they hold `expected` events, or at `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: dict[int, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # ClickHouse may still be coming back: ask again
            last = counted_by_window(s, service, before)
        if sum(last.values()) >= expected:
            break
        time.sleep(1.0)
    return last


def first_counted_after(s: Settings, service: str, since: float, timeout_s: float) -> float | None:
    """Wall time at which `features` first counts an event of a window that starts after `since`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # ClickHouse may still be coming back: ask again
            if any(w >= since and n > 0 for w, n in counted_by_window(s, service).items()):
                return time.time()
        time.sleep(0.5)
    return None


def decisions_between(s: Settings, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Decisions published on `fs.decisions` with a timestamp in [start, end]."""
    consumer = kafka_consumer(s.kafka, s.kafka.topic_decisions, auto_offset_reset="earliest",
                              enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        out = []
        for record in consumer:
            if start_ms <= record.timestamp <= end_ms:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(record.value))
        return out
    finally:
        consumer.close()


def _acted(d: dict[str, Any]) -> bool:
    """A decision that changed something: not skipped (`skipped: guardrail` too), failed or a dry run."""
    outcome = str(d.get("outcome") or "")
    return not d.get("dry_run") and not outcome.startswith(("skipped", "failed", "dry_run"))


def rising(load: dict[int, int], ts_ms: int, window_s: int) -> bool:
    """Whether the load (requests per window start) of the window holding `ts_ms` exceeds the window
    before it by more than RISE; no data for either window: not rising (cannot tell)."""
    window = ts_ms // 1000 // window_s * window_s
    now, before = load.get(window), load.get(window - window_s)
    return now is not None and before is not None and now > before * (1 + RISE)


def unsafe(decisions: list[dict[str, Any]], load: dict[str, dict[int, int]] | None = None,
           window_s: int = 10) -> int:
    """Unsafe actuator actions among `decisions` (pure): weights set to 0 (a drain from latency alone);
    rounds of one service that take more than MAX_UNAVAILABLE distinct instances out of membership at
    once; a drain while MAX_UNAVAILABLE instances of the service are still draining (from earlier
    rounds: a drain ends with its instance's `remove`, `deregister` or `undrain`); and a scale-down
    while the service's load rises (`load`: requests per window start, per service, from `features`)."""
    acted = sorted((d for d in decisions if _acted(d)), key=lambda d: int(d.get("ts") or 0))
    zeroed = sum(1 for d in acted if d.get("action") == "set_weight" and d.get("after") in (0, 0.0))
    removed: dict[tuple[Any, Any], set[Any]] = defaultdict(set)
    for d in acted:
        if d.get("action") in MEMBERSHIP_REMOVALS:
            removed[(d.get("service"), d.get("ts"))].add(d.get("target"))
    batches = sum(1 for targets in removed.values() if len(targets) > MAX_UNAVAILABLE)
    draining: dict[Any, dict[Any, Any]] = defaultdict(dict)  # service -> draining target -> ts of its drain
    overlapping = 0
    for d in acted:
        service, target, ts = d.get("service"), d.get("target"), d.get("ts")
        if d.get("action") == "drain" and target not in draining[service]:
            earlier = [t for t, at in draining[service].items() if at != ts]  # same round: counted as a batch
            overlapping += len(earlier) >= MAX_UNAVAILABLE
            draining[service][target] = ts
        elif d.get("action") in ("remove", "deregister", "undrain"):
            draining[service].pop(target, None)
    scale_downs = sum(1 for d in acted if d.get("action") == "scale" and d.get("before") is not None
                      and d.get("after") is not None and float(d["after"]) < float(d["before"])
                      and rising((load or {}).get(str(d.get("service")), {}), int(d.get("ts") or 0), window_s))
    return zeroed + batches + overlapping + scale_downs


def load_by_window(s: Settings, services: set[str]) -> dict[str, dict[int, int]]:
    """Requests per window start of each of `services` (its `*` row in `features` FINAL)."""
    if not services:
        return {}
    cl = clickhouse_client(s.clickhouse, s.clickhouse.database)
    try:
        rows = cl.execute(f"SELECT service, toUInt32(window_start), sum(requests) "
                          f"FROM {s.clickhouse.database}.features FINAL "
                          "WHERE service IN %(s)s AND instance = '*' GROUP BY service, window_start",
                          {"s": tuple(sorted(services))})
    finally:
        cl.disconnect()
    out: dict[str, dict[int, int]] = defaultdict(dict)
    for service, window, requests in rows:
        out[str(service)][int(window)] = int(requests)
    return dict(out)


def scale_down_services(decisions: list[dict[str, Any]]) -> set[str]:
    return {str(d.get("service")) for d in decisions if d.get("action") == "scale" and _acted(d)
            and d.get("before") is not None and d.get("after") is not None and d["after"] < d["before"]}


class BalancerLoad(threading.Thread):
    """Requests through HAProxy's frontend of a pool service, `rate` a second, until stopped; counts failures."""

    def __init__(self, url: str, rate: float = 10.0) -> None:
        super().__init__(daemon=True, name="chaos-balancer-load")
        self.url, self.rate = url, rate
        self.sent = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                self.sent += 1
                try:
                    self.failed += http.get(self.url).status_code != 200
                except httpx.HTTPError:
                    self.failed += 1
                self.stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))


def chaos_pool_service(s: Settings) -> PoolServiceSettings:
    """The pool service whose instance is crashed: of those with an instance, the quickest to start."""
    running = [svc for svc in s.pool.services if svc.replicas > 0]
    if not running:
        raise RuntimeError("pool-instance: no pool service runs an instance (pool.services replicas)")
    return min(running, key=lambda svc: svc.startup_delay_s)


def pool_status(s: Settings, service: str) -> PoolStatus:
    answer = httpx.get(f"http://127.0.0.1:{s.pool.admin_port}/v1/pools/{service}", timeout=5)
    answer.raise_for_status()
    return PoolStatus.model_validate(answer.json())


def crash_pool_instance(s: Settings, service: str) -> tuple[str, int]:
    """SIGKILL the oldest ready instance of `service` (with its children); returns its name and how many died."""
    ready = [i for i in pool_status(s, service).instances if i.state == "ready" and i.pid]
    if not ready:
        raise RuntimeError(f"pool-instance: {service} has no ready instance to crash")
    victim = min(ready, key=lambda i: i.started_at or 0)
    return victim.instance, kill_family(victim.pid or 0)


def pool_recovered(s: Settings, svc: PoolServiceSettings, gone: str) -> bool:
    """The pool has `desired` ready instances again, none of them `gone`; HAProxy's backend has exactly
    those in rotation; and a request through HAProxy's frontend answers."""
    status = pool_status(s, svc.name)
    ready = {i.instance for i in status.instances if i.state == "ready"}
    if gone in {i.instance for i in status.instances} or len(ready) < status.desired:
        return False
    servers = HAProxyRuntime(s.haproxy_runtime).servers(svc.name)
    in_rotation = {name for name, (_, _, _, admin) in servers.items() if not admin & 0x09}  # not maint, not drain
    if in_rotation != {server_name(i) for i in ready}:
        return False
    return probes.http_ok(f"http://127.0.0.1:{svc.haproxy_port}/")()


def wait_pool_recovered(s: Settings, svc: PoolServiceSettings, gone: str, timeout_s: float) -> float | None:
    """Wall time at which `pool_recovered` first holds, or None at `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ActuatorError, ValueError):  # the pool may be busy: ask again
            if pool_recovered(s, svc, gone):
                return time.time()
        time.sleep(0.25)
    return None


@dataclass
class Outage:
    crashed_at: float
    restarted: float
    recovered: bool = True
    notes: list[str] = field(default_factory=list)
    balancer: BalancerLoad | None = None


def crash_component(s: Settings, component: str, down_s: float, say: Say, only: set[str] | None,
                    config: Path | None) -> Outage:
    """SIGKILL a stack component, leave it down `down_s`, and start it again through the launcher."""
    record = pid_files(s).read(component)
    if record is None or record.process() is None:
        raise RuntimeError(f"{component} is not running in this stack")
    crashed_at = time.time()
    killed = crash(record)
    say(f"{component}: crashed ({killed} processes); down for {down_s:.0f} s")
    time.sleep(down_s)
    up(s, lambda _: None, config, only=only)
    return Outage(crashed_at, time.time())


def crash_pool_fault(s: Settings, settle_s: float, say: Say) -> Outage:
    """SIGKILL one ready pool instance under a load through HAProxy; the pool replaces it by itself."""
    svc = chaos_pool_service(s)
    balancer = BalancerLoad(f"http://127.0.0.1:{svc.haproxy_port}/")
    balancer.start()
    time.sleep(1.0)
    crashed_at = time.time()
    try:
        gone, killed = crash_pool_instance(s, svc.name)
    except BaseException:
        balancer.stop.set()
        raise
    say(f"{POOL_INSTANCE}: crashed {svc.name}/{gone} ({killed} processes); the pool replaces it")
    back = wait_pool_recovered(s, svc, gone, settle_s)
    if back is None:
        return Outage(crashed_at, time.time(), recovered=False, balancer=balancer,
                      notes=[f"{svc.name}: not back to its ready instances in HAProxy within {settle_s:.0f} s"])
    return Outage(crashed_at, back, balancer=balancer)


def run_fault(s: Settings, component: str, rate: float, down_s: float, after_s: float, settle_s: float,
              say: Say, only: set[str] | None, config: Path | None) -> FaultResult:
    service = f"chaos-{component}-{uuid.uuid4().hex[:6]}"
    replay = Replay(s, service, rate, s.streams.instance_window)  # compared with instance `INSTANCE`'s windows
    replay.start()
    time.sleep(3.0)
    try:
        outage = crash_pool_fault(s, settle_s, say) if component == POOL_INSTANCE else \
            crash_component(s, component, down_s, say, only, config)
    except BaseException:
        replay.stop.set()
        raise
    crashed_at, restarted = outage.crashed_at, outage.restarted
    recover_s = restarted - crashed_at
    say(f"{component}: {'answering again' if outage.recovered else 'NOT recovered'} {recover_s:.1f} s after the crash")
    flowing = first_counted_after(s, service, restarted, settle_s)
    if flowing is not None:
        flowing -= crashed_at
    time.sleep(max(0.0, after_s - (time.time() - restarted)))
    replay.stop.set()
    replay.join(timeout=15)
    balancer = outage.balancer
    if balancer is not None:
        balancer.stop.set()
        balancer.join(timeout=15)
    ended_ms = int(time.time() * 1000)
    flush_window = replay.flush(s.streams.allowed_lateness_s)
    windows = wait_counted(s, service, replay.sent, settle_s, before=flush_window)
    counted = sum(windows.values())
    doubled = sum(1 for w, n in windows.items() if n > replay.sent_by_window.get(w, 0))
    decisions = decisions_between(s, int(crashed_at * 1000) - 5000, ended_ms)
    load = load_by_window(s, scale_down_services(decisions))
    notes = outage.notes + ([f"{replay.refused} batches refused while down (not counted as sent; the sender "
                             "retries next tick)"] if replay.refused else [])
    if balancer is not None:
        notes.append(f"{balancer.failed} of {balancer.sent} requests through HAProxy failed during the fault")
    return FaultResult(component=component, service=service, sent=replay.sent, counted=counted,
                       lost=max(0, replay.sent - counted), double_counted_windows=doubled,
                       late_events=late_events(s, service),
                       unsafe_actions=unsafe(decisions, load, s.streams.window_s), decisions=len(decisions),
                       recover_s=round(recover_s, 2), flowing_s=None if flowing is None else round(flowing, 2),
                       notes=notes, recovered=outage.recovered,
                       balancer_sent=None if balancer is None else balancer.sent,
                       balancer_failed=None if balancer is None else balancer.failed)


@contextlib.contextmanager
def private_stack(only: set[str] | None, say: Say, overrides: dict[str, Any] | None = None) -> Iterator[Settings]:
    """A stack of its own on free ports under a temp folder (its components read the same file); stopped after.
    `overrides`: settings tables to set in that file (see `private_config`)."""
    folder = Path(tempfile.mkdtemp(prefix="fs-chaos-", dir="/tmp"))  # short: Ray's socket paths live under it
    config = private_config(folder, overrides)
    s = load_settings(config, state_dir=folder)
    try:
        timings = up(s, say, config, only=only)
        say(f"private stack ready in {timings['total']:.1f} s under {folder}")
        yield s
    finally:
        down(s, lambda _: None)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def controllers(s: Settings, config: Path | None, rate: float, say: Say) -> Iterator[None]:
    """The weight controller (`foresight adapt`, a round every 2 s) on the demo service, fed by a demo load."""
    import subprocess
    import sys

    from infra.stack.launcher import child_env

    load = Replay(s, s.demo.service, rate, s.streams.window_s, instances=(("s1", 5.0), ("s2", 40.0)))
    load.start()
    log = (s.state / "logs" / "chaos-adapt.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "adapt", "--interval", "2"],
                            env=child_env(s, config), stdout=log, stderr=subprocess.STDOUT)
    say(f"controllers: the weight adapter runs (pid {proc.pid}), demo load {rate:.0f} events/s")
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        load.stop.set()
        load.join(timeout=15)


def run_chaos(base: Settings, faults: list[str], rate: float, down_s: float, after_s: float, settle_s: float,
              say: Say, this_stack: bool = False, with_controllers: bool = True,
              stack_overrides: dict[str, Any] | None = None) -> list[FaultResult]:
    """Crash each of `faults` in turn under a replay and measure what was lost, doubled or unsafe. On a private
    stack (with `stack_overrides` in its settings file) unless `this_stack`."""
    needed = PIPELINE | set().union(*(FAULT_NEEDS.get(f, {f}) for f in faults)) | \
        (CONTROLLED if with_controllers else set())
    only = None if this_stack else needed
    results: list[FaultResult] = []
    with (contextlib.nullcontext(base) if this_stack else private_stack(only, say, stack_overrides)) as s:
        config = None if this_stack else s.state / "foresight.toml"
        with controllers(s, config, rate, say) if with_controllers else contextlib.nullcontext():
            for component in faults:
                result = run_fault(s, component, rate, down_s, after_s, settle_s, say, only, config)
                say(f"{component}: sent {result.sent}, lost {result.lost} ({result.late_events} of them late), "
                    f"double-counted windows {result.double_counted_windows}, unsafe actions {result.unsafe_actions} "
                    f"({result.decisions} decisions)")
                results.append(result)
    return results


def as_json(results: list[FaultResult]) -> dict[str, Any]:
    return {"faults": [{**asdict(r), "ok": r.ok} for r in results],
            "lost": sum(r.lost for r in results),
            "double_counted_windows": sum(r.double_counted_windows for r in results),
            "unsafe_actions": sum(r.unsafe_actions for r in results),
            "recover_s_max": max((r.recover_s for r in results), default=math.nan)}
