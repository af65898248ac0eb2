"""The pool backend's service time has the configured mean (so capacity = workers / mean holds), and
an instance queues once its workers are busy."""

from __future__ import annotations

import asyncio
import random
import statistics

import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.pool.backend import Backend, BackendConfig, service_time_sampler


@pytest.mark.parametrize("dist", ["exponential", "lognormal", "constant"])
def test_service_time_mean_is_the_configured_one(dist: str) -> None:
    cfg = BackendConfig(service="web", instance="w1", port=1, mean_service_s=0.08, distribution=dist, sigma=0.6)
    sample = service_time_sampler(cfg, random.Random(7))
    mean = statistics.fmean(sample() for _ in range(40_000))
    assert mean == pytest.approx(0.08, rel=0.03)


def test_unknown_distribution_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="exponential"):
        service_time_sampler(BackendConfig(service="w", instance="i", port=1, distribution="pareto"), random.Random())


def test_requests_beyond_the_workers_queue() -> None:
    async def scenario() -> tuple[int, int, int]:
        backend = Backend(BackendConfig(service="web", instance="w1", port=1, workers=2, mean_service_s=0.2,
                                        distribution="constant"))
        async with TestClient(TestServer(backend.app())) as client:
            calls = [asyncio.create_task(client.get("/")) for _ in range(5)]
            await asyncio.sleep(0.1)
            peak_in_flight, peak_queue = backend.in_flight, backend.queued
            answers = await asyncio.gather(*calls)
            assert all(a.status == 200 for a in answers)
            admin = await (await client.get("/admin/inflight")).json()
            return peak_in_flight, peak_queue, admin["served"]

    in_flight, queued, served = asyncio.run(scenario())
    assert (in_flight, queued, served) == (5, 3, 5)


def test_warm_up_then_ready_then_stop_reports_each_step_once() -> None:
    """Bound at once, `/healthz` 503 while warming up, `on_ready` (registration) once after the
    delay, `on_stop` (deregistration) once when stopped; a real port on loopback."""
    import httpx

    from infra.core.ports import free_port

    calls: list[str] = []
    port = free_port()
    backend = Backend(BackendConfig(service="web", instance="w1", port=port, startup_delay_s=0.6),
                      on_ready=lambda: calls.append("ready"), on_stop=lambda: calls.append("stop"))

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(backend.run())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                try:
                    warming = (await client.get("/healthz")).status_code
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            while not backend.ready:
                await asyncio.sleep(0.02)
            ready = (await client.get("/healthz")).status_code
        backend._stop.set()
        await task
        return warming, ready

    assert asyncio.run(scenario()) == (503, 200)
    assert calls == ["ready", "stop"]
