"""The open-loop load generator: a reproducible schedule, the summary, and a short run against a
local aiohttp server (answers, 5xx, timeouts and the in-flight bound all counted)."""

import asyncio
import math

import pytest
from aiohttp import web

from infra.benches.load import LoadResult, RequestRecord, percentile, poisson_schedule, run_load, summarize


def test_schedule_is_reproducible_by_seed_and_poisson_like() -> None:
    a = poisson_schedule(100.0, 60.0, seed=7)
    assert a == poisson_schedule(100.0, 60.0, seed=7)
    assert a != poisson_schedule(100.0, 60.0, seed=8)
    assert all(0 < x < 60 for x in a) and a == sorted(a)
    assert 5400 < len(a) < 6600  # 6000 expected, sd ~77
    gaps = [b - c for b, c in zip(a[1:], a, strict=False)]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert sd == pytest.approx(mean, rel=0.1)  # exponential gaps: sd = mean


def test_schedule_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        poisson_schedule(0, 10, 1)


def test_percentile_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 99))


def test_summary_counts_errors_and_instances() -> None:
    recs = [RequestRecord(i * 0.01, 0.1, 10.0 + i, 200, None, "a" if i % 2 else "b") for i in range(96)]
    recs += [RequestRecord(1.0, 0.1, 5000.0, 0, "timeout"), RequestRecord(1.1, 0.1, 3.0, 503, "http_5xx", "a"),
             RequestRecord(1.2, 0.2, 1.0, 0, "connection"), RequestRecord(1.3, 0.0, 0.0, 0, "overflow")]
    s = summarize(LoadResult("u", 100, 1.0, 1, recs, elapsed_s=1.0))
    assert s.scheduled == 100 and s.ok == 96
    assert s.errors == {"http_5xx": 1, "timeout": 1, "connection": 1, "overflow": 1}
    assert s.error_pct == pytest.approx(4.0)
    assert s.max_ms == 5000.0  # the timeout counts at the time the client gave up
    assert s.by_instance == {"a": 49, "b": 48}
    assert s.achieved_rps == 99  # overflowed requests were never sent


def test_run_against_a_local_server_counts_every_outcome() -> None:
    async def scenario() -> LoadResult:
        hang = asyncio.Event()
        calls = {"n": 0}

        async def flaky(request: web.Request) -> web.Response:
            calls["n"] += 1
            if calls["n"] % 4 == 0:
                await hang.wait()  # never answered: the client times out
            return web.Response(status=500 if calls["n"] % 4 == 1 else 200, headers={"X-Instance": "s2"})

        app = web.Application()
        app.router.add_get("/flaky", flaky)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            schedule = [i * 0.005 for i in range(40)]
            result = await run_load(f"http://127.0.0.1:{port}/flaky", schedule, timeout_s=0.5, max_in_flight=8)
        finally:
            hang.set()
            await runner.cleanup()
        return result

    result = asyncio.run(scenario())
    s = summarize(result)
    assert s.scheduled == 40
    assert s.errors["http_5xx"] > 0 and s.errors["timeout"] > 0
    assert s.errors["overflow"] > 0  # hung requests fill the bound of 8
    assert s.ok + sum(s.errors.values()) == 40
    assert set(s.by_instance) == {"s2"}
