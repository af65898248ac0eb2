"""The pool's admin API on loopback (the autoscaler's pool actuator calls it) and the process that
runs the pool: `GET /v1/pools/{service}`, `PUT /v1/pools/{service}/replicas`, `/metrics`, `/healthz`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable

import uvicorn
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.core.pool_api import PoolStatus, ReplicasRequest
from infra.core.service_registry import Registry
from infra.core.settings import PoolServiceSettings, Settings
from infra.pool.manager import PoolError, PoolManager


def build_app(manager: PoolManager, on_close: Callable[[], None] = lambda: None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.start()
        yield
        await manager.close()  # uvicorn runs this on SIGTERM/SIGINT: instances stop with the pool
        on_close()

    app = FastAPI(title="foresight pool", lifespan=lifespan,
                  description="The local instance pool: replicas per service, scaled with graceful drain.")

    def fail(exc: PoolError) -> HTTPException:
        return HTTPException(status_code=exc.status, detail=str(exc))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/pools")
    async def pools() -> list[PoolStatus]:
        return [await manager.status(s) for s in manager.services]

    @app.get("/v1/pools/{service}")
    async def pool(service: str) -> PoolStatus:
        try:
            return await manager.status(service)
        except PoolError as exc:
            raise fail(exc) from exc

    @app.put("/v1/pools/{service}/replicas", status_code=202)
    async def replicas(service: str, body: ReplicasRequest) -> PoolStatus:
        try:
            manager.set_replicas(service, body.replicas)
            return await manager.status(service)
        except PoolError as exc:
            raise fail(exc) from exc

    return app


def backend_argv(svc: PoolServiceSettings, instance: str, port: int, index: int) -> list[str]:
    """An instance is `foresight pool-backend`; it reads its service's settings (its fault scenario
    among them) from the same configuration (the pool's environment is inherited)."""
    return [sys.executable, "-P", "-m", "infra.cli", "pool-backend", "--service", svc.name,
            "--instance", instance, "--port", str(port), "--index", str(index)]


def run_pool(s: Settings) -> None:
    """Serve the admin API and run the pool until SIGTERM/SIGINT; its instances stop with it."""
    from infra.workers import decision_log
    from lb_adapters.sync.sink import QueuedSink

    sink = QueuedSink(lambda: decision_log(s, "pool"))
    registry = Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s)

    def close() -> None:
        registry.close()
        sink.close()

    manager = PoolManager(s.pool, registry, backend_argv, s.state / "logs" / "pool", sink.publish,
                          max_unavailable=s.registry.max_unavailable)
    uvicorn.run(build_app(manager, close), host="127.0.0.1", port=s.pool.admin_port, log_level="warning")
