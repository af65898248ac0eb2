"""`foresight bench lb`: roundrobin, leastconn and Foresight on a real HAProxy, same load, same faults.

Each arm gets a fresh private rig under its own folder: backends of unequal capacity (the pool's
`Backend`: `workers` at the same mean service time, so capacity is proportional to workers) and an
HAProxy 2.6 (the stack's binary) on free loopback ports, with its runtime API on a socket in the
folder. The shared stack is never touched. The load is the same open-loop Poisson schedule in
every arm (`infra.benches.load`, same seed, so the same send times), and the fault scenario is
injected into the backends at the load's start (`/admin/faults`), so every arm's faults begin at
the same instant of its schedule.

Arms: `roundrobin` and `leastconn` (equal weights, no controller), and `foresight` (leastconn plus
`lb_control.ForesightController`: weights and predictive drains through the runtime API).
Before the arms, the client alone is measured against an instant backend (no HAProxy): its latency
and send lag there are what the client itself adds.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import infra
from infra.benches.load import LoadResult, LoadSummary, poisson_schedule, run_load, summarize
from infra.core.contracts import HAPROXY_MAX_WEIGHT
from infra.core.model_registry import list_versions, registry_root
from infra.core.ports import free_ports
from infra.core.settings import AdapterSettings, HealthSettings
from infra.pool.faults import Scenario, generate, load_scenario
from infra.stack import probes
from infra.stack.process import ProcessRecord, spawn, stop
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.policies.drain import health_knobs

ARMS = ("roundrobin", "leastconn", "foresight")
# Opt-in (`--arms ...,oracle`): leastconn with weights proportional to the true capacities and each faulty
# instance drained at the very moment it fails. No policy can know either, so it bounds what any
# weights + drain policy could reach on the same load and faults.
ORACLE = "oracle"
BACKEND = "bench"
DEFAULT_FAULT_SEED = 9001  # a held-out seed: never used in training or tuning

Say = Callable[[str], None]

# Written per arm rather than rendered from infra/templates/haproxy.cfg: the balance algorithm changes
# between arms (it cannot change at runtime), and the bench must not log to the stack's ingest. The
# backend section mirrors the stack's pool sections (components.haproxy_pool_sections): health checks,
# a refused connection retried on another server.
HAPROXY_CFG = """\
global
    stats socket {socket} mode 600 level admin
    stats timeout 30s
    maxconn 4096
    nbthread 1

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe_{backend}
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance {algorithm}
    option httpchk GET /healthz
    retry-on conn-failure empty-response
    retries 3
    option redispatch 1
{servers}
"""


@dataclass(frozen=True)
class LbBenchConfig:
    duration_s: float = 60.0
    load_fraction: float = 0.7
    workers: tuple[int, ...] = (2, 4, 6, 8)
    mean_service_s: float = 0.1
    seed: int = 1  # the load's: same seed, same send times in every arm
    fault_seed: int = DEFAULT_FAULT_SEED
    faults: int = 1
    scenario: Path | None = None  # a scenario file instead of generate(fault_seed, ...)
    timeout_s: float = 5.0
    max_in_flight: int = 512
    interval_s: float = 1.0
    window_s: float = 2.0
    overhead_s: float = 10.0  # client alone against an instant backend; 0 = skip
    arms: tuple[str, ...] = ARMS
    state_dir: Path | None = None  # where the model registry is looked up

    @property
    def capacities_rps(self) -> list[float]:
        return [w / self.mean_service_s for w in self.workers]

    @property
    def rate_rps(self) -> float:
        return self.load_fraction * sum(self.capacities_rps)

    def scenario_(self) -> Scenario:
        if self.scenario is not None:
            return load_scenario(self.scenario)
        return generate(self.fault_seed, len(self.workers), self.duration_s, self.faults)


def names(n: int) -> list[str]:
    return [f"b{i}" for i in range(n)]


def _env() -> dict[str, str]:
    root = str(Path(infra.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait(what: str, cond: Callable[[], bool], timeout_s: float, record: ProcessRecord | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if record is not None and record.process() is None:
            raise RuntimeError(f"{what}: the process exited; see {record.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}" + (f"; see {record.log}" if record else ""))
        time.sleep(0.05)


class Rig:
    """Backends and one HAProxy on free ports under `folder`; `close()` stops them."""

    def __init__(self, folder: Path, workers: tuple[int, ...], mean_service_s: float, algorithm: str,
                 seed: int, distribution: str = "exponential") -> None:
        self.folder, self.workers, self.mean_service_s = folder, workers, mean_service_s
        self.algorithm, self.seed, self.distribution = algorithm, seed, distribution
        self.names = names(len(workers))
        first = free_ports(len(workers) + 1)
        self.port = first
        self.ports = dict(zip(self.names, range(first + 1, first + 1 + len(workers)), strict=True))
        self.socket = folder / "haproxy.sock"
        self.runtime = HAProxyRuntime(self.socket)
        self.records: list[ProcessRecord] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def backend_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = _env()
        for i, (name, workers) in enumerate(zip(self.names, self.workers, strict=True)):
            argv = [sys.executable, "-P", "-m", "infra.benches.lb_backend", "--instance", name,
                    "--port", str(self.ports[name]), "--workers", str(workers),
                    "--mean-service-s", str(self.mean_service_s), "--distribution", self.distribution,
                    "--seed", str(self.seed * 1000 + i)]
            self.records.append(spawn(name, argv, self.folder / f"{name}.log", env, cwd=self.folder))
        for name, record in zip(self.names, self.records, strict=True):
            _wait(f"backend {name}", probes.http_ok(f"{self.backend_url(name)}/healthz"), 30, record)
        servers = "\n".join(f"    server {n} 127.0.0.1:{self.ports[n]} weight 100 check inter 1s" for n in self.names)
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(socket=self.socket, backend=BACKEND, port=self.port,
                                          algorithm=self.algorithm, servers=servers))
        self.socket.unlink(missing_ok=True)
        record = spawn("haproxy", [shutil.which("haproxy") or "haproxy", "-db", "-f", str(cfg)],
                       self.folder / "haproxy.log", env, cwd=self.folder)
        self.records.append(record)
        _wait("haproxy's runtime API", probes.haproxy_runtime(self.socket), 30, record)

        def all_up() -> bool:
            stats = self.runtime.server_stats(BACKEND)
            return len(stats) == len(self.names) and all(r.get("status", "").startswith("UP") for r in stats.values())

        _wait("every server UP in haproxy", all_up, 30, record)

    def inject(self, scenario: Scenario) -> dict[str, int]:
        """Each backend's faults of `scenario`, counted from now; returns how many each got."""
        out = {}
        for i, name in enumerate(self.names):
            faults = [f.model_dump(exclude={"instance"}, exclude_none=True) for f in scenario.for_instance(name, i)]
            if faults:
                httpx.post(f"{self.backend_url(name)}/admin/faults", json=faults, timeout=5).raise_for_status()
            out[name] = len(faults)
        return out

    def close(self) -> None:
        for record in reversed(self.records):
            stop(record, timeout_s=5)
        self.records.clear()


def _thread_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ArmResult:
    arm: str
    summary: LoadSummary
    client_cpu_pct: float
    faults: dict[str, int]
    final: dict[str, dict[str, str]] = field(default_factory=dict)  # server -> status, weight at the end
    control: dict[str, Any] | None = None
    loadavg_1m: tuple[float, float] = (0.0, 0.0)  # the machine's load average at the arm's start and end


def _load(url: str, schedule: list[float], cfg: LbBenchConfig, label: str, say: Say, duration_s: float
          ) -> tuple[LoadResult, float]:
    """The schedule against `url` in this thread; the client thread's CPU share of the wall time."""
    def progress(t: float, done: int, errors: int) -> None:
        say(f"{label}: {min(t, duration_s):4.0f}/{duration_s:.0f} s, {done:,} answered or failed, {errors:,} errors")

    cpu0, wall0 = _thread_cpu_s(), time.monotonic()
    result = asyncio.run(run_load(url, schedule, timeout_s=cfg.timeout_s, max_in_flight=cfg.max_in_flight,
                                  progress=progress, progress_every_s=10.0, rate_rps=cfg.rate_rps, seed=cfg.seed))
    return result, 100.0 * (_thread_cpu_s() - cpu0) / max(1e-9, time.monotonic() - wall0)


def run_arm(arm: str, cfg: LbBenchConfig, schedule: list[float], scenario: Scenario, folder: Path,
            say: Say) -> ArmResult:
    import multiprocessing
    import queue

    from infra.benches.lb_control import ControlSpec, control_process

    rig = Rig(folder / arm, cfg.workers, cfg.mean_service_s, "roundrobin" if arm == "roundrobin" else "leastconn",
              cfg.seed)
    mp = multiprocessing.get_context("spawn")
    ready, go, stop_control, traces = mp.Event(), mp.Event(), mp.Event(), mp.Queue()
    proc = None
    trace: dict[str, Any] | None = None
    try:
        rig.start()
        if arm == "foresight":
            # the live controller's round counts: its rounds and windows (5 s, 10 s) run 5 x faster here
            knobs = health_knobs(HealthSettings())
            spec = ControlSpec(rig.socket, BACKEND, {n: f"{rig.backend_url(n)}/metrics" for n in rig.names},
                               AdapterSettings(), knobs, cfg.window_s, cfg.interval_s,
                               registry_root(cfg.state_dir) if cfg.state_dir else None)
            proc = mp.Process(target=control_process, args=(spec, ready, go, stop_control, traces),
                              name="foresight-control", daemon=True)
            proc.start()
            if not ready.wait(120):
                raise RuntimeError("the Foresight control process did not load its models within 120 s")
        say(f"{arm}: {len(rig.names)} backends and haproxy ({rig.algorithm}) up on :{rig.port}; "
            f"{len(schedule):,} requests over {cfg.duration_s:.0f} s")
        load_before = os.getloadavg()[0]
        faults = rig.inject(scenario)
        if arm == ORACLE:
            oracle = _oracle(rig, scenario, cfg)
        go.set()
        try:
            result, cpu_pct = _load(rig.url, schedule, cfg, arm, say, cfg.duration_s)
        finally:
            stop_control.set()
            if arm == ORACLE:
                for timer in oracle:
                    timer.cancel()
            if proc is not None:
                try:
                    trace = traces.get(timeout=30)
                except queue.Empty:
                    trace = {"errors": ["the control process sent no trace"]}
                proc.join(timeout=10)
        final = {name: {"status": row.get("status", ""), "weight": row.get("weight", "")}
                 for name, row in rig.runtime.server_stats(BACKEND).items()}
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
        rig.close()
    control = None
    if trace is not None:
        rounds = sorted(trace.get("round_ms", []))
        control = {k: v for k, v in trace.items() if k != "round_ms"}
        control["round_p99_ms"] = round(rounds[min(len(rounds) - 1, int(0.99 * len(rounds)))], 1) if rounds else None
        control["drains"] = audit_drains(control.get("drains", []), scenario, rig.names)
    return ArmResult(arm, summarize(result), round(cpu_pct, 1), faults, final, control,
                     (round(load_before, 2), round(os.getloadavg()[0], 2)))


def _oracle(rig: Rig, scenario: Scenario, cfg: LbBenchConfig) -> list[threading.Timer]:
    """The oracle arm's knowledge, applied: capacity-proportional weights now, a drain at each failure."""
    top = max(cfg.workers)
    for name, workers in zip(rig.names, cfg.workers, strict=True):
        rig.runtime.set_weight(BACKEND, name, max(1, round(HAPROXY_MAX_WEIGHT * workers / top)))
    timers = []
    for k, name in enumerate(rig.names):
        moments = [t for f in scenario.for_instance(name, k) if (t := f.failure_s()) is not None]
        if moments:
            timer = threading.Timer(min(moments), rig.runtime.set_server_state, (BACKEND, name, "drain"))
            timer.daemon = True
            timer.start()
            timers.append(timer)
    return timers


def audit_drains(drains: list[dict[str, Any]], scenario: Scenario, names_: list[str]) -> list[dict[str, Any]]:
    """Each drain decision with the ground truth beside it: was the instance a faulty one, and did the
    decision come before its fault began (`before_onset_s`: seconds early; a drain long before any
    fault is a false drain that the scenario happened to excuse, not a prediction)."""
    out = []
    for d in drains:
        i = names_.index(str(d["instance"])) if d["instance"] in names_ else -1
        faults = scenario.for_instance(str(d["instance"]), i)
        onset = min((f.start_s for f in faults), default=None)
        failure = min((t for f in faults if (t := f.failure_s()) is not None), default=None)
        out.append({**d, "faulty": bool(faults), "fault_onset_s": onset, "failure_s": failure,
                    "before_onset_s": None if onset is None else round(onset - float(d["t_s"]), 1)})
    return out


def client_overhead(cfg: LbBenchConfig, schedule: list[float], folder: Path, say: Say) -> dict[str, float]:
    """The client alone: the same rate against one instant backend (no service time, no queue, no HAProxy)."""
    rig = Rig(folder / "overhead", (100_000,), 0.0, "roundrobin", cfg.seed, distribution="constant")
    part = [t for t in schedule if t < cfg.overhead_s]
    try:
        rig.start()
        say(f"client overhead: {len(part):,} requests over {cfg.overhead_s:.0f} s to an instant backend")
        result, cpu_pct = _load(rig.backend_url(rig.names[0]) + "/", part, cfg, "overhead", say, cfg.overhead_s)
    finally:
        rig.close()
    s = summarize(result)
    return {"p50_ms": round(s.p50_ms, 2), "p99_ms": round(s.p99_ms, 2), "lag_p99_ms": round(s.lag_p99_ms, 2),
            "error_pct": round(s.error_pct, 3), "client_cpu_pct": round(cpu_pct, 1), "requests": s.scheduled}


def ratio(a: float, b: float) -> float | None:
    """a / b rounded; None when b is 0 (no ratio to a zero baseline: see the absolute figures)."""
    return None if b == 0 else round(a / b, 3)


def result_json(cfg: LbBenchConfig, scenario: Scenario, arms: dict[str, ArmResult], overhead: dict[str, float] | None,
                registry: dict[str, list[str]]) -> dict[str, Any]:
    p99 = {a: round(r.summary.p99_ms, 1) for a, r in arms.items()}
    err = {a: round(r.summary.error_pct, 3) for a, r in arms.items()}
    out: dict[str, Any] = {"p99_ms": p99, "error_pct": err}
    if {"foresight", "roundrobin"} <= arms.keys():
        out["ratio_p99_vs_rr"] = ratio(p99["foresight"], p99["roundrobin"])
    if {"foresight", "leastconn"} <= arms.keys():
        out["ratio_p99_vs_leastconn"] = ratio(p99["foresight"], p99["leastconn"])
        out["ratio_errors_vs_leastconn"] = ratio(err["foresight"], err["leastconn"])
        targets = {"p99_le_0.9x_leastconn": p99["foresight"] <= 0.9 * p99["leastconn"],
                   "errors_le_0.3x_leastconn": err["foresight"] <= 0.3 * err["leastconn"]}
        if "roundrobin" in arms:
            targets["p99_le_0.6x_roundrobin"] = p99["foresight"] <= 0.6 * p99["roundrobin"]
        out["targets_met"] = targets
    if {ORACLE, "leastconn"} <= arms.keys():  # the bound: what perfect weights and drains reach here
        out["ratio_p99_oracle_vs_leastconn"] = ratio(p99[ORACLE], p99["leastconn"])
        out["ratio_errors_oracle_vs_leastconn"] = ratio(err[ORACLE], err["leastconn"])
    out["p50_ms"] = {a: round(r.summary.p50_ms, 1) for a, r in arms.items()}
    out["scheduled"] = {a: r.summary.scheduled for a, r in arms.items()}
    out["errors"] = {a: r.summary.errors for a, r in arms.items()}
    out["served_by"] = {a: r.summary.by_instance for a, r in arms.items()}
    out["client"] = {"lag_p99_ms": {a: round(r.summary.lag_p99_ms, 1) for a, r in arms.items()},
                     "cpu_pct": {a: r.client_cpu_pct for a, r in arms.items()}, "alone": overhead,
                     "machine_loadavg_1m": {a: r.loadavg_1m for a, r in arms.items()}}
    out["final_servers"] = {a: r.final for a, r in arms.items()}
    control = arms["foresight"].control if "foresight" in arms else None
    out["foresight"] = control
    out["models"] = {"answered": (control or {}).get("models", {}), "in_process": True,
                     "registry_versions": registry}
    out["settings"] = {"seed": cfg.seed, "rate_rps": round(cfg.rate_rps, 2), "load_fraction": cfg.load_fraction,
                       "duration_s": cfg.duration_s, "workers": list(cfg.workers), "mean_service_s": cfg.mean_service_s,
                       "capacities_rps": [round(c, 1) for c in cfg.capacities_rps],
                       # The service time's own p99 (exponential: mean x ln 100), queueing aside: no balancer
                       # gets the p99 below it.
                       "service_p99_floor_ms": round(cfg.mean_service_s * math.log(100) * 1000, 1),
                       "fault_seed": None if cfg.scenario else cfg.fault_seed,
                       "scenario": scenario.model_dump(exclude_none=True), "timeout_s": cfg.timeout_s,
                       "max_in_flight": cfg.max_in_flight, "interval_s": cfg.interval_s, "window_s": cfg.window_s,
                       "haproxy": "2.6 (private, nbthread 1)"}
    return out


def registry_versions(state_dir: Path | None) -> dict[str, list[str]]:
    """Learned `latency` and `risk` versions in the model registry (empty lists: none trained yet)."""
    if state_dir is None:
        return {"latency": [], "risk": []}
    root = registry_root(state_dir)
    return {"latency": list_versions(root, "latency"), "risk": list_versions(root, "risk")}


def run_lb_bench(cfg: LbBenchConfig, folder: Path, say: Say) -> dict[str, Any]:
    unknown = set(cfg.arms) - {*ARMS, ORACLE}
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(sorted(unknown))}: {', '.join(ARMS)}")
    if len(cfg.workers) < 2:
        raise ValueError("the bench needs at least 2 backends")
    scenario = cfg.scenario_()
    schedule = poisson_schedule(cfg.rate_rps, cfg.duration_s, cfg.seed)
    registry = registry_versions(cfg.state_dir)
    say(f"load: {cfg.rate_rps:.0f} req/s ({cfg.load_fraction:.0%} of {sum(cfg.capacities_rps):.0f} req/s healthy "
        f"capacity: {', '.join(f'{c:.0f}' for c in cfg.capacities_rps)}), seed {cfg.seed}, {len(schedule):,} requests")
    say(f"faults: scenario {scenario.name}: " + "; ".join(
        f"{f.instance} {f.kind} at {f.start_s:.1f} s (ramp {f.ramp_s:.0f} s)" for f in scenario.faults))
    for kind, versions in registry.items():
        say(f"model registry: {kind}: {versions[-1] if versions else 'no learned version; the baseline answers'}")
    overhead = client_overhead(cfg, schedule, folder, say) if cfg.overhead_s > 0 else None
    if overhead:
        say(f"client alone: p99 {overhead['p99_ms']} ms, send lag p99 {overhead['lag_p99_ms']} ms, "
            f"cpu {overhead['client_cpu_pct']}%")
    arms = {}
    for arm in cfg.arms:
        arms[arm] = run_arm(arm, cfg, schedule, scenario, folder, say)
        s = arms[arm].summary
        say(f"{arm}: p50 {s.p50_ms:.0f} ms, p99 {s.p99_ms:.0f} ms, errors {s.error_pct:.2f}% "
            f"({', '.join(f'{k} {v}' for k, v in s.errors.items() if v) or 'none'})")
    out = result_json(cfg, scenario, arms, overhead, registry)
    answered = out["models"]["answered"]
    if answered:
        say(f"foresight models answered: {json.dumps(answered)}")
    stale = [k for k, kind in (("weights", "latency"), ("risk", "risk"))
             if registry[kind] and str(answered.get(k, "")).endswith("@baseline")]
    if stale:
        out["models"]["note"] = (f"learned version(s) in the registry, but the baseline answered for "
                                 f"{', '.join(stale)}: serving's replicas on this code do not load them")
        say(f"[yellow]warning:[/] {out['models']['note']}")
    return out
