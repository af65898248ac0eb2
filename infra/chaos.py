"""`foresight chaos`: crash one component at a time under a bounded replay, and count what it cost.

For each fault a service of its own gets a steady stream of access events through ingest's HTTP
endpoint (`wait=true`: counted as sent once Kafka acknowledged them). Meanwhile the component is
crashed (SIGKILL to its whole process family, as an OOM kill or a node loss would), left down a
few seconds, and restarted by the launcher. Then, once the stream worker has drained:

- events lost: sent, less what `features` (FINAL) counts for the service's instance;
- windows double-counted: windows whose `features` count exceeds the events sent into them;
- unsafe actions: decisions on `fs.decisions` during the fault that drain an instance to weight 0
  or change more instances than `max_unavailable` at once (the controllers that exist act on weights);
- time to recover: crash to the component answering its probe again, and crash to the first event
  sent after the restart being counted in `features` (the pipeline flowing end to end).

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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from infra.core.db import client as clickhouse_client
from infra.core.ports import free_ports
from infra.core.settings import Settings, load_settings
from infra.stack.launcher import down, pid_files, up
from infra.stack.process import ProcessRecord

Say = Callable[[str], None]
# What the pipeline needs to carry the replay; faults are crashed among these (and serving, etcd).
PIPELINE = {"kafka", "clickhouse", "ingest-http", "stream-worker"}
# What the weight controller (`foresight adapt`) acts through: serving's /v1/weights, HAProxy, the demo backends.
CONTROLLED = {"serving", "haproxy", "backend-s1", "backend-s2", "etcd"}
DEFAULT_FAULTS = ["stream-worker", "clickhouse", "serving", "autoscaler", "registry-sync", "etcd"]
MEMBERSHIP_REMOVALS = {"remove", "drain", "deregister"}
INSTANCE = "i1"
MAX_UNAVAILABLE = 1


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

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.double_counted_windows == 0 and self.unsafe_actions == 0


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


def private_config(folder: Path) -> Path:
    """A settings file that moves every port of the stack to a free block, and its state to `folder`."""
    first = free_ports(96)
    ports = iter(range(first, first + 64))
    moved = _moved_ports(Settings().model_dump(mode="json"), lambda: next(ports))
    moved["kafka"] = {"bootstrap_servers": f"127.0.0.1:{next(ports)}", "partitions": 2}
    moved.setdefault("serving", {})["internal_ports"] = f"{first + 64}-{first + 95}"
    path = folder / "foresight.toml"
    path.write_text(f'state_dir = "{folder}"\n' + _toml(moved) + "\n")
    return path


def crash(record: ProcessRecord) -> int:
    """SIGKILL the process, its group and every descendant at once; returns how many were killed."""
    try:
        family = [psutil.Process(record.pid), *psutil.Process(record.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGKILL)
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
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(s.kafka.topic_decisions, bootstrap_servers=s.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000,
                             **s.kafka.kafka_python_options())
    try:
        out = []
        for record in consumer:
            if start_ms <= record.timestamp <= end_ms:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(record.value))
        return out
    finally:
        consumer.close()


def unsafe(decisions: list[dict[str, Any]]) -> int:
    """Weights set to 0 (a drain from latency alone), and rounds of one service that take more than
    MAX_UNAVAILABLE instances out of membership at once."""
    acted = [d for d in decisions if d.get("outcome") not in ("skipped", "dry_run")]
    zeroed = sum(1 for d in acted if d.get("action") == "set_weight" and d.get("after") in (0, 0.0))
    removals = Counter((d.get("service"), d.get("ts")) for d in acted if d.get("action") in MEMBERSHIP_REMOVALS)
    return zeroed + sum(1 for n in removals.values() if n > MAX_UNAVAILABLE)


def run_fault(s: Settings, component: str, rate: float, down_s: float, after_s: float, settle_s: float,
              say: Say, only: set[str] | None, config: Path | None) -> FaultResult:
    service = f"chaos-{component}-{uuid.uuid4().hex[:6]}"
    replay = Replay(s, service, rate, s.streams.instance_window)  # compared with instance `INSTANCE`'s windows
    replay.start()
    time.sleep(3.0)
    record = pid_files(s).read(component)
    if record is None or record.process() is None:
        replay.stop.set()
        raise RuntimeError(f"{component} is not running in this stack")
    crashed_at = time.time()
    killed = crash(record)
    say(f"{component}: crashed ({killed} processes); down for {down_s:.0f} s")
    time.sleep(down_s)
    up(s, lambda _: None, config, only=only)
    restarted = time.time()
    recover_s = restarted - crashed_at
    say(f"{component}: answering again {recover_s:.1f} s after the crash")
    flowing = first_counted_after(s, service, restarted, settle_s)
    if flowing is not None:
        flowing -= crashed_at
    time.sleep(max(0.0, after_s - (time.time() - restarted)))
    replay.stop.set()
    replay.join(timeout=15)
    ended_ms = int(time.time() * 1000)
    flush_window = replay.flush(s.streams.allowed_lateness_s)
    windows = wait_counted(s, service, replay.sent, settle_s, before=flush_window)
    counted = sum(windows.values())
    doubled = sum(1 for w, n in windows.items() if n > replay.sent_by_window.get(w, 0))
    decisions = decisions_between(s, int(crashed_at * 1000) - 5000, ended_ms)
    notes = [f"{replay.refused} batches refused while down (not counted as sent; the sender retries next tick)"] \
        if replay.refused else []
    return FaultResult(component=component, service=service, sent=replay.sent, counted=counted,
                       lost=max(0, replay.sent - counted), double_counted_windows=doubled,
                       late_events=late_events(s, service),
                       unsafe_actions=unsafe(decisions), decisions=len(decisions),
                       recover_s=round(recover_s, 2), flowing_s=None if flowing is None else round(flowing, 2),
                       notes=notes)


@contextlib.contextmanager
def private_stack(only: set[str] | None, say: Say) -> Iterator[Settings]:
    """A stack of its own on free ports under a temp folder (its components read the same file); stopped after."""
    folder = Path(tempfile.mkdtemp(prefix="fs-chaos-", dir="/tmp"))  # short: Ray's socket paths live under it
    config = private_config(folder)
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
              say: Say, this_stack: bool = False, with_controllers: bool = True) -> list[FaultResult]:
    needed = PIPELINE | set(faults) | (CONTROLLED if with_controllers else set())
    only = None if this_stack else needed
    results: list[FaultResult] = []
    with (contextlib.nullcontext(base) if this_stack else private_stack(only, say)) as s:
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
