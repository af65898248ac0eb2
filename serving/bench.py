"""`foresight bench serving`: 1,000-instance `/v1/weights` requests at a fixed concurrency.

Against a Serve app it starts itself (a local Ray head, the app on a free port, stopped at the
end), or against a running one given by URL (the stack's). In the same run it times the bare
model call on the same tensor in-process, so the HTTP + Ray overhead is a ratio, not a guess.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import torch
from pydantic import SecretStr

from infra.core.ports import free_ports
from infra.core.settings import ClickHouseSettings, RaySettings, ServingSettings
from serving.models.latency_weights import LatencyWeights, features_tensor
from serving.schemas import InstanceFeatures

BENCH_APP = "foresight-bench"
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ServingBench:
    target: str
    instances: int
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    rps: float
    bare_ms: float
    overhead_ratio: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("p50_ms", "p99_ms", "rps", "bare_ms", "overhead_ratio")}


def own_serving(serving: ServingSettings) -> ServingSettings:
    """`serving` on free ports (the API's and the internal ones), with registry polling off."""
    first = free_ports(21)
    return serving.model_copy(update={"port": first, "internal_ports": f"{first + 1}-{first + 20}",
                                      "registry_poll_s": 0.0})


def request_body(n: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    return {"service": "bench", "instances": [
        {"instance": f"i{i}", "latency_p99_ms": round(rng.uniform(2.0, 400.0), 2),
         "latency_p50_ms": round(rng.uniform(1.0, 50.0), 2), "requests": rng.randint(0, 5000),
         "error_rate": round(rng.choice([0.0, 0.0, 0.0, rng.random() * 0.1]), 4), "queue": rng.randint(0, 5)}
        for i in range(n)]}


def bare_model_ms(body: dict[str, Any], repeat: int = 200) -> float:
    """Median in-process time of the model on the request's tensor (one thread, as the replica)."""
    torch.set_num_threads(1)
    features = features_tensor([InstanceFeatures.model_validate(i) for i in body["instances"]])
    model = LatencyWeights().eval()
    times = []
    with torch.inference_mode():
        for _ in range(repeat):
            started = time.perf_counter()
            model(features)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _load(url: str, payload: bytes, token: str | None, concurrency: int,
                requests: int) -> tuple[list[float], float]:
    """Latency of each of `requests` requests, `concurrency` in flight, and the wall time of all."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    latencies: list[float] = []
    remaining = requests
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with http.post(f"{url}/v1/weights", data=payload) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"/v1/weights answered {resp.status}: {body[:300]!r}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _clear(token: SecretStr | None) -> str | None:
    return token.get_secret_value() if token else None


def measure(url: str, token: str | None, instances: int, concurrency: int, requests: int,
            warmup: int, say: Say = _quiet) -> ServingBench:
    """`say` hears of each phase between them (no progress thread runs while requests are timed)."""
    body = request_body(instances)
    payload = orjson.dumps(body)
    say(f"{url}: {warmup} warm-up requests of {instances} instances, {concurrency} in flight")
    asyncio.run(_load(url, payload, token, concurrency, warmup))  # replicas warm, batches formed
    say(f"{requests} measured requests")
    latencies, elapsed = asyncio.run(_load(url, payload, token, concurrency, requests))
    rps = len(latencies) / elapsed
    say(f"{rps:,.0f} requests/s; timing the bare model call")
    bare = bare_model_ms(body)
    p99 = percentile(latencies, 0.99)
    return ServingBench(target=url, instances=instances, concurrency=concurrency, requests=len(latencies),
                        p50_ms=round(percentile(latencies, 0.5), 2), p99_ms=round(p99, 2), rps=round(rps, 1),
                        bare_ms=round(bare, 3), overhead_ratio=round(p99 / bare, 1))


def run_serving_bench(serving: ServingSettings, ray_settings: RaySettings, clickhouse: ClickHouseSettings,
                      state_dir: Path, url: str | None, instances: int, concurrency: int, requests: int,
                      warmup: int, say: Say = _quiet) -> ServingBench:
    """Bench `url`, or an app of its own on a fresh local Ray head (never the stack's Ray)."""
    if url is not None:
        return measure(url.rstrip("/"), _clear(serving.token), instances, concurrency, requests, warmup, say)
    from ray import serve

    from infra.core.model_registry import registry_root
    from serving.app import build_app
    from serving.runner import init_ray, shutdown, start_serve

    own = own_serving(serving)
    say("starting a local Ray head and the serving app of the bench")
    init_ray(ray_settings.model_copy(update={"address": None}), state_dir)
    try:
        start_serve(own)
        serve.run(build_app(own, clickhouse, registry_root(state_dir)), name=BENCH_APP, route_prefix="/")
        return measure(f"http://{own.host}:{own.port}", _clear(own.token), instances, concurrency, requests,
                       warmup, say)
    finally:
        shutdown(local_head=True)
