"""`foresight pool`: the local scaling actuator. It runs real backend processes per service and
converges each service on its desired replica count.

Scaling up starts processes (each registers itself once warmed up). Scaling down picks victims with
the membership guardrails (newest ready first, never the last ready one, at most `max_unavailable`
at once), marks them `draining` in the registry (compare-and-set), waits until the balancers stopped
sending and in-flight requests finished (bounded by the drain timeout), then stops them and deletes
their keys. Every membership change is a Decision. An instance that dies is deregistered at once and
replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import Counter, Gauge, Histogram

from infra.core.pool_api import PoolInstance, PoolStatus
from infra.core.ports import free_port
from infra.core.service_registry import Registry, RegistryEntry, RegistryError
from infra.core.settings import PoolServiceSettings, PoolSettings
from lb_adapters.policies.membership import choose_victims
from lb_adapters.schemas import Decision

log = logging.getLogger(__name__)

DESIRED = Gauge("foresight_pool_desired", "Replicas asked for.", ["service"])
CURRENT = Gauge("foresight_pool_current", "Backend processes running.", ["service"])
READY = Gauge("foresight_pool_ready", "Instances registered as ready.", ["service"])
DRAIN = Histogram("foresight_pool_drain_seconds", "From `draining` to idle (or the timeout).", ["service"],
                  buckets=(0.5, 1, 2, 5, 10, 30, 60, 120))
DRAIN_TIMEOUTS = Counter("foresight_pool_drain_timeouts", "Drains that ran out of time; stopped anyway.", ["service"])
EXITS = Counter("foresight_pool_instance_exits", "Instances that exited without being asked to.", ["service"])

BackendArgv = Callable[[PoolServiceSettings, str, int, int], list[str]]  # service, name, port, index
Publish = Callable[[list[Decision]], None]


class PoolError(ValueError):
    """A request the pool refuses: unknown service (404) or replicas out of bounds (422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Instance:
    service: str
    name: str
    port: int
    proc: asyncio.subprocess.Process
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False


class PoolManager:
    def __init__(self, cfg: PoolSettings, registry: Registry, backend_argv: BackendArgv, log_dir: Path,
                 publish: Publish, max_unavailable: float = 0.25, env: dict[str, str] | None = None) -> None:
        self.cfg, self.registry, self.backend_argv = cfg, registry, backend_argv
        self.started: dict[str, int] = defaultdict(int)
        self.log_dir, self.publish, self.max_unavailable, self.env = log_dir, publish, max_unavailable, env
        self.services = {svc.name: svc for svc in cfg.services}
        self.desired = {svc.name: svc.replicas for svc in cfg.services}
        self.instances: dict[str, dict[str, Instance]] = {svc.name: {} for svc in cfg.services}
        self._wake = {svc.name: asyncio.Event() for svc in cfg.services}
        self._tasks: list[asyncio.Task[None]] = []
        self._crashes = {svc.name: 0 for svc in cfg.services}  # quick exits in a row, for the restart backoff
        self._next_spawn = {svc.name: 0.0 for svc in cfg.services}
        # (service, instance) -> when the pool first saw it drained by a controller
        self._drained_since: dict[tuple[str, str], float] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=2.0)

    # -- the API ------------------------------------------------------------------------------
    def _service(self, service: str) -> PoolServiceSettings:
        svc = self.services.get(service)
        if svc is None:
            raise PoolError(404, f"unknown service {service!r}; the pool runs {', '.join(self.services) or 'none'}")
        return svc

    def set_replicas(self, service: str, replicas: int, reason: str = "requested") -> None:
        svc = self._service(service)
        if not svc.min_replicas <= replicas <= svc.max_replicas:
            raise PoolError(422, f"replicas {replicas} for {service} outside its bounds "
                                 f"{svc.min_replicas}..{svc.max_replicas} (pool.services settings)")
        before = self.desired[service]
        self.desired[service] = replicas
        DESIRED.labels(service).set(replicas)
        if before != replicas:
            self._decide(service, service, "scale", before, replicas, reason)
        self._wake[service].set()

    async def status(self, service: str) -> PoolStatus:
        self._service(service)
        try:
            entries: dict[str, RegistryEntry] | None = {
                e.instance: e for e in await asyncio.to_thread(self.registry.list, service)}
        except RegistryError:
            entries = None  # etcd away: the pool cannot say which are registered
        rows = []
        for inst in self.instances[service].values():
            entry = entries.get(inst.name) if entries is not None else None
            state = "unknown" if entries is None else "stopping" if inst.stopping and entry is None else \
                entry.record.state if entry is not None and entry.record is not None else "starting"
            started_at = entry.record.started_at if entry is not None and entry.record is not None else None
            rows.append(PoolInstance(instance=inst.name, port=inst.port, state=state, pid=inst.proc.pid,
                                     started_at=started_at))
        replaced = {n for n, e in (entries or {}).items() if e.record is not None and e.record.replacement_requested}
        ready = sum(1 for r in rows if r.state == "ready" and r.instance not in replaced)
        READY.labels(service).set(ready)
        # current: what counts towards `desired` (instances out of service, or marked for replacement, are being
        # replaced)
        in_service = sum(1 for r in rows if r.state in ("ready", "starting") and r.instance not in replaced)
        return PoolStatus(service=service, desired=self.desired[service], current=in_service, ready=ready,
                          instances=sorted(rows, key=lambda r: r.instance))

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        for service in self.services:
            DESIRED.labels(service).set(self.desired[service])
            self._tasks.append(asyncio.create_task(self._reconcile(service), name=f"pool-{service}"))

    async def close(self) -> None:
        """Stop every instance (they deregister themselves on SIGTERM)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(self._stop(inst, "pool stopping") for insts in self.instances.values()
                               for inst in list(insts.values())))
        await self._http.aclose()

    async def _reconcile(self, service: str) -> None:
        svc = self.services[service]
        draining: set[asyncio.Task[None]] = set()
        while True:
            self._reap(service)
            out = await self._out_of_service(service)
            live = [i for i in self.instances[service].values() if not i.stopping and i.name not in out]
            missing = self.desired[service] - len(live)
            if missing > 0 and time.monotonic() >= self._next_spawn[service]:
                for _ in range(missing):
                    await self._spawn(svc)
            elif missing < 0:
                # unregistered (still warming up) instances go first: no balancer knows them
                starting = await self._unregistered(service, live)
                for inst in sorted(starting, key=lambda i: -i.started)[:-missing]:
                    inst.stopping = True
                    draining.add(asyncio.create_task(self._stop(inst, "scale down: not registered yet")))
                    missing += 1
                if missing < 0:
                    victims = await self._victims(service, -missing)
                    for inst in victims:
                        inst.stopping = True
                        draining.add(asyncio.create_task(self._drain_and_stop(inst)))
            draining = {t for t in draining if not t.done()}
            CURRENT.labels(service).set(len(self.instances[service]))
            self._wake[service].clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake[service].wait(), 0.5)

    async def _out_of_service(self, service: str) -> set[str]:
        """Instances someone else took out of service (the health controller, an operator), or marked for
        replacement (still serving, until the health controller can drain them): they no longer count towards
        the desired number, so the pool starts their replacements. etcd away: none."""
        try:
            entries = await asyncio.to_thread(self.registry.list, service)
        except RegistryError:
            return set()
        mine = self.instances[service]
        self._retire_drained(service, entries)
        return {e.instance for e in entries if e.record is not None
                and (e.record.state != "ready" or e.record.replacement_requested)
                and e.instance in mine and not mine[e.instance].stopping}

    def _retire_drained(self, service: str, entries: list[RegistryEntry]) -> None:
        """Stop what a controller drained and did not re-admit within `retire_drained_after_s`."""
        mine = self.instances[service]
        now = time.monotonic()
        drained = {e.instance for e in entries if e.record is not None and e.record.state in ("draining", "drained")
                   and e.record.metadata.get("set_by") == "controller" and e.instance in mine}
        for key in [k for k in self._drained_since if k[0] == service and k[1] not in drained]:
            del self._drained_since[key]  # re-admitted, gone, or an operator took it over
        for name in drained:
            since = self._drained_since.setdefault((service, name), now)
            inst = mine[name]
            if now - since >= self.cfg.retire_drained_after_s and not inst.stopping:
                inst.stopping = True
                self._drained_since.pop((service, name), None)
                task = asyncio.get_running_loop().create_task(self._stop(
                    inst, f"drained by the health controller {now - since:.0f} s ago and not re-admitted: retired "
                          "(its replacement already runs)"))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _reap(self, service: str) -> None:
        for name, inst in list(self.instances[service].items()):
            if inst.proc.returncode is None:
                continue
            del self.instances[service][name]
            if not inst.stopping:
                EXITS.labels(service).inc()
                # an instance that dies young (bad config, port clash) is restarted with a growing pause
                lived = time.monotonic() - inst.started
                self._crashes[service] = self._crashes[service] + 1 if lived < 30 else 0
                if self._crashes[service]:
                    self._next_spawn[service] = time.monotonic() + min(30.0, 0.5 * 2 ** (self._crashes[service] - 1))
                log.warning("%s/%s exited with %s; deregistering and replacing it", service, name,
                            inst.proc.returncode)
                self._decide(service, f"{service}/{name}", "remove", 1, 0,
                             f"instance exited ({inst.proc.returncode}) without being asked")
                asyncio.get_running_loop().run_in_executor(None, self._deregister_quietly, service, name)

    def _deregister_quietly(self, service: str, name: str) -> None:
        try:
            self.registry.deregister(service, name)
        except RegistryError as exc:
            log.warning("deregister %s/%s: %s (its lease expires anyway)", service, name, exc)

    async def _spawn(self, svc: PoolServiceSettings) -> None:
        name = f"{svc.name}-{secrets.token_hex(3)}"
        port = free_port()
        index = self.started[svc.name]  # `#k` of a fault scenario: the k-th instance this pool started
        self.started[svc.name] += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as out:
            proc = await asyncio.create_subprocess_exec(*self.backend_argv(svc, name, port, index), stdout=out,
                                                        stderr=asyncio.subprocess.STDOUT,
                                                        stdin=asyncio.subprocess.DEVNULL, env=self.env,
                                                        preexec_fn=_die_with_parent)
        self.instances[svc.name][name] = Instance(svc.name, name, port, proc)
        log.info("started %s/%s on port %d (pid %d)", svc.name, name, port, proc.pid)
        self._decide(svc.name, f"{svc.name}/{name}", "start", None, 1,
                     f"scale to {self.desired[svc.name]}: port {port}, registers after {svc.startup_delay_s:g} s")

    async def _unregistered(self, service: str, live: list[Instance]) -> list[Instance]:
        try:
            known = {e.instance for e in await asyncio.to_thread(self.registry.list, service)}
        except RegistryError:
            return []
        return [i for i in live if i.name not in known]

    async def _victims(self, service: str, count: int) -> list[Instance]:
        """Ready instances the guardrails let us drain now (maybe fewer than asked; the rest next round)."""
        try:
            entries = await asyncio.to_thread(self.registry.list, service)
        except RegistryError as exc:
            log.warning("cannot scale %s down while etcd is away: %s", service, exc)
            return []
        mine = self.instances[service]
        # one being stopped counts as out of service already, even before its `draining` is written
        records = {e.instance: e.record.model_copy(update={"state": "draining"})
                   if e.instance in mine and mine[e.instance].stopping and e.record.state == "ready" else e.record
                   for e in entries if e.record is not None}
        names = choose_victims(records, count, self.max_unavailable)
        return [mine[n] for n in names if n in mine and not mine[n].stopping]

    # -- draining -----------------------------------------------------------------------------
    async def _drain_and_stop(self, inst: Instance) -> None:
        service, name = inst.service, inst.name
        t0 = time.monotonic()
        marked = False
        for _ in range(5):  # compare-and-set; re-read when the key moved under us
            entry = await asyncio.to_thread(self.registry.get, service, name)
            if entry is None or entry.record is None or entry.record.state != "ready":
                break
            if await asyncio.to_thread(self.registry.set_state, service, name, "draining", entry.mod_revision,
                                       "pool"):
                marked = True
                break
        if marked:
            self._decide(service, f"{service}/{name}", "drain", 1, 0,
                         f"scale down to {self.desired[service]}: stop sending, let in-flight finish")
        idle = await self._wait_idle(inst)
        DRAIN.labels(service).observe(time.monotonic() - t0)
        if not idle:
            DRAIN_TIMEOUTS.labels(service).inc()
            log.warning("%s/%s not idle after %.0f s; stopping it anyway", service, name, self.cfg.drain_timeout_s)
        await self._stop(inst, f"drained in {time.monotonic() - t0:.1f} s" if idle else "drain timed out")

    async def _wait_idle(self, inst: Instance) -> bool:
        """True once nothing is in flight and no request came for `drain_quiet_s` (the balancers have
        stopped sending); False at the drain timeout."""
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        url = f"http://127.0.0.1:{inst.port}/admin/inflight"
        while time.monotonic() < deadline:
            if inst.proc.returncode is not None:
                return True
            try:
                s = (await self._http.get(url)).json()
                age = s.get("last_request_age_s")
                if s["in_flight"] == 0 and (age is None or age >= self.cfg.drain_quiet_s):
                    return True
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)
        return False

    async def _stop(self, inst: Instance, reason: str) -> None:
        inst.stopping = True
        if inst.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                inst.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(inst.proc.wait(), self.cfg.stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    inst.proc.kill()
                await inst.proc.wait()
        await asyncio.to_thread(self._deregister_quietly, inst.service, inst.name)
        self.instances[inst.service].pop(inst.name, None)
        self._decide(inst.service, f"{inst.service}/{inst.name}", "remove", 1, 0, reason)
        self._wake[inst.service].set()

    def _decide(self, service: str, target: str, action: str, before: float | None, after: float,
                reason: str) -> None:
        self.publish([Decision(ts=int(time.time() * 1000), service=service, actuator="pool", target=target,
                               action=action, before=before, after=after, reason=reason, prediction_ref="pool",
                               outcome="applied")])



def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the pool dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so no orphan keeps serving and renewing its lease; it deregisters as usual."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the lease still expires once the orphan is stopped
