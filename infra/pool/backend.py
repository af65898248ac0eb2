"""One pool instance: an asyncio HTTP server that queues and saturates like a real one.

`workers` requests are served at once, each for a service time drawn from a distribution with
mean `workers / capacity_rps`; the others wait in a queue. So its capacity in requests per second
is what the operator configures, and beyond it latency grows with the queue, as in production.
After a startup delay it reports ready (`on_ready`: registers in etcd); on SIGTERM it reports
stopping (`on_stop`: deregisters), lets in-flight requests finish, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infra.core.service_registry import InstanceLease, InstanceRecord, Registry, RegistryError
from infra.core.settings import PoolServiceSettings
from infra.pool.faults import Effect, Fault, effect_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendConfig:
    service: str
    instance: str
    port: int
    host: str = "127.0.0.1"
    workers: int = 4
    mean_service_s: float = 0.08
    distribution: str = "exponential"  # exponential | lognormal | constant
    sigma: float = 0.5
    startup_delay_s: float = 0.5
    stop_grace_s: float = 10.0


def service_time_sampler(cfg: BackendConfig, rng: random.Random) -> Callable[[], float]:
    """Seconds one request occupies a worker; every distribution has mean `cfg.mean_service_s`."""
    mean = cfg.mean_service_s
    if cfg.distribution == "exponential":
        return lambda: rng.expovariate(1.0 / mean)
    if cfg.distribution == "lognormal":
        # E[exp(N(mu, s^2))] = exp(mu + s^2 / 2): pick mu so the mean is `mean`.
        import math

        mu = math.log(mean) - cfg.sigma**2 / 2
        return lambda: rng.lognormvariate(mu, cfg.sigma)
    if cfg.distribution == "constant":
        return lambda: mean
    raise ValueError(f"unknown service-time distribution {cfg.distribution!r}: exponential | lognormal | constant")


class Backend:
    """The server's state and handlers; `run()` serves until SIGTERM."""

    def __init__(self, cfg: BackendConfig, on_ready: Callable[[], None] = lambda: None,
                 on_stop: Callable[[], None] = lambda: None, seed: int | None = None,
                 faults: Sequence[Fault] = (), on_faults: Callable[[list[Fault], int], None] | None = None) -> None:
        self.cfg = cfg
        self.on_faults = on_faults  # told each fault set with the wall time (ms) its clock starts: the ground truth
        self.faults = list(faults)
        self.effect = Effect()  # what the faults do now; the fault loop updates it
        self.ready_at: float | None = None  # monotonic time the scenario clock starts
        self._phantom = 0  # workers a capacity-loss fault holds
        self._fault_task: asyncio.Task[None] | None = None
        self._rng = random.Random(seed)
        self.on_ready = on_ready
        self.on_stop = on_stop
        self.sample = service_time_sampler(cfg, random.Random(seed))
        self.ready = False
        self.in_flight = 0
        self.queued = 0
        self.served = 0
        self.last_request = 0.0  # monotonic time of the last work request (not health checks)
        self._stop = asyncio.Event()
        self.metrics = CollectorRegistry()
        labels = {"service": cfg.service, "instance": cfg.instance}
        self.m_in_flight = Gauge("foresight_backend_in_flight", "Requests received and not answered yet.",
                                 list(labels), registry=self.metrics).labels(**labels)
        self.m_queue = Gauge("foresight_backend_queue", "Requests waiting for a worker.", list(labels),
                             registry=self.metrics).labels(**labels)
        self.m_busy = Gauge("foresight_backend_busy_workers_ratio", "Share of workers busy (the resource gauge).",
                            list(labels), registry=self.metrics).labels(**labels)
        self.m_requests = Counter("foresight_backend_requests", "Requests answered, by status.",
                                  [*labels, "status"], registry=self.metrics)
        self.m_latency = Histogram("foresight_backend_latency_seconds", "Queue + service time of a request.",
                                   list(labels), registry=self.metrics,
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)).labels(**labels)
        self.m_ready = Gauge("foresight_backend_ready", "1 once warmed up and registered.", list(labels),
                             registry=self.metrics).labels(**labels)
        self.m_resource = Gauge("foresight_backend_resource_ratio", "A resource that a leak exhausts (0 healthy, "
                                "1 about to fail).", list(labels), registry=self.metrics).labels(**labels)
        self._labels = labels
        self._sem = asyncio.Semaphore(cfg.workers)

    # -- handlers ---------------------------------------------------------------------------
    async def work(self, request: web.Request) -> web.Response:
        start = time.monotonic()
        self.last_request = start
        self.in_flight += 1
        self.queued += 1
        self._gauges()
        try:
            async with self._sem:
                self.queued -= 1
                self._gauges()
                effect = self.effect
                if effect.hang:  # accepted, never answered: the client's timeout is the only way out
                    await self._stop.wait()
                await asyncio.sleep(self.sample() * effect.service_factor)
                failed = effect.error_fraction > 0 and self._rng.random() < effect.error_fraction
        finally:
            self.in_flight -= 1
            self._gauges()
        self.served += 1
        self.m_latency.observe(time.monotonic() - start)
        status = 500 if failed else 200
        self.m_requests.labels(**self._labels, status=str(status)).inc()
        return web.Response(status=status, text=f"{self.cfg.instance}\n", headers={"X-Instance": self.cfg.instance})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503, text="ok\n" if self.ready else "starting\n")

    async def admin(self, request: web.Request) -> web.Response:
        """What the pool needs for draining: is anything in flight, and when did the last request come."""
        age = time.monotonic() - self.last_request if self.last_request else None
        return web.json_response({"instance": self.cfg.instance, "ready": self.ready, "in_flight": self.in_flight,
                                  "queued": self.queued, "served": self.served, "last_request_age_s": age})

    async def inject(self, request: web.Request) -> web.Response:
        """Add faults to a running instance (chaos on demand): a JSON list of faults whose `start_s` counts
        from now. 422 with the reason for a body that is not one; 409 before the instance is ready."""
        if self.ready_at is None:
            return web.json_response({"detail": "not ready yet: faults count from the instance's ready time"},
                                     status=409)
        try:
            raw = await request.json()
            if not isinstance(raw, list):
                raise ValueError("the body must be a JSON list of faults")
            offset = time.monotonic() - self.ready_at
            added = [Fault.model_validate({**f, "instance": self.cfg.instance}) for f in raw]
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            return web.json_response({"detail": str(exc)}, status=422)
        now_ms = int(time.time() * 1000)
        if self.on_faults is not None:
            await asyncio.to_thread(self.on_faults, added, now_ms)
        self.faults += [f.model_copy(update={"start_s": f.start_s + offset}) for f in added]
        if self._fault_task is None:
            self._fault_task = asyncio.create_task(self._fault_loop())
        return web.json_response({"instance": self.cfg.instance, "faults": len(self.faults)}, status=202)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _gauges(self) -> None:
        self.m_in_flight.set(self.in_flight)
        self.m_queue.set(self.queued)
        self.m_busy.set((self.in_flight - self.queued) / self.cfg.workers)

    def apply_faults(self, t: float) -> Effect:
        """Bring the instance to the faults' effect at scenario time `t`: workers held by a capacity
        loss, the resource gauge; a crash ends the process at once, as a real one would."""
        effect = effect_at(self.faults, t)
        if effect.crash:
            log.warning("%s/%s: injected crash at t=%.1f s", self.cfg.service, self.cfg.instance, t)
            os._exit(70)
        self.effect = effect
        self.m_resource.set(effect.resource)
        return effect

    async def _fault_loop(self) -> None:
        while not self._stop.is_set():
            assert self.ready_at is not None
            want = min(self.apply_faults(time.monotonic() - self.ready_at).workers_lost, self.cfg.workers - 1)
            while self._phantom < want:  # a lost worker is one that takes no request
                await self._sem.acquire()
                self._phantom += 1
            while self._phantom > want:
                self._sem.release()
                self._phantom -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/admin/inflight", self.admin)
        app.router.add_post("/admin/faults", self.inject)
        app.router.add_route("*", "/{tail:.*}", self.work)
        return app

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        # Bound at once (the pool knows the port is ours), ready only after the warm-up.
        await web.TCPSite(runner, self.cfg.host, self.cfg.port, reuse_address=True).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("%s/%s listening on %s:%d, ready in %.1f s", self.cfg.service, self.cfg.instance,
                 self.cfg.host, self.cfg.port, self.cfg.startup_delay_s)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cfg.startup_delay_s)
            if not self._stop.is_set():
                await asyncio.to_thread(self.on_ready)
                self.ready = True
                self.ready_at = time.monotonic()
                self.m_ready.set(1)
                if self.faults:
                    self._fault_task = asyncio.create_task(self._fault_loop())
                log.info("%s/%s ready", self.cfg.service, self.cfg.instance)
                await self._stop.wait()
        finally:
            self.ready = False
            self.m_ready.set(0)
            try:
                await asyncio.to_thread(self.on_stop)
            except Exception as exc:  # the lease expires anyway; stopping must not hang on etcd
                log.warning("%s/%s: deregister failed (%s); its lease will expire", self.cfg.service,
                            self.cfg.instance, exc)
            deadline = time.monotonic() + self.cfg.stop_grace_s
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await runner.cleanup()
            log.info("%s/%s stopped after %d requests", self.cfg.service, self.cfg.instance, self.served)


def run_registered(service: str, instance: str, port: int, svc: PoolServiceSettings, registry: Registry,
                      ttl_s: int, faults: Sequence[Fault] = (),
                   on_faults: Callable[[list[Fault], int], None] | None = None) -> None:
    """One pool instance: serve, register once warmed up (a lease kept alive every TTL/3, taken again
    if etcd let it expire), deregister on SIGTERM."""
    leases: list[InstanceLease] = []

    def register() -> None:
        record = InstanceRecord(address="127.0.0.1", port=port, state="ready", weight=svc.weight,
                                started_at=int(time.time() * 1000), version="pool",
                                metadata={"pid": str(os.getpid()), "capacity_rps": f"{svc.capacity_rps:g}"})
        leases.append(registry.register(service, instance, record, ttl_s, on_lost=lambda _lease: register_retrying()))
        if on_faults is not None and faults and len(leases) == 1:
            on_faults(list(faults), record.started_at)

    def register_retrying() -> None:
        """etcd may be away (it is fail-static for everyone else): keep trying, the instance just waits."""
        attempt = 0
        while True:
            try:
                register()
                return
            except RegistryError as exc:
                attempt += 1
                if attempt == 1:
                    log.warning("%s/%s: cannot register yet (%s); retrying", service, instance, exc)
                time.sleep(min(5.0, 0.25 * attempt))

    def deregister() -> None:
        if leases:
            leases[-1].revoke()
        registry.close()

    cfg = BackendConfig(service=service, instance=instance, port=port, workers=svc.workers,
                        mean_service_s=svc.mean_service_s, distribution=svc.service_time, sigma=svc.service_time_sigma,
                        startup_delay_s=svc.startup_delay_s)
    asyncio.run(Backend(cfg, on_ready=register_retrying, on_stop=deregister, faults=faults, on_faults=on_faults).run())
