"""An open-loop Poisson load generator for HTTP on loopback, replayable by seed.

Open loop: requests leave at the times of a Poisson schedule drawn from `seed`, whether or not the
earlier ones were answered, as users' requests do; a closed-loop client would slow down with the
server and hide its queue (coordinated omission). So each request's latency counts from its
*scheduled* time, and the client's own lag (sent - scheduled) is recorded apart, to show when the
client rather than the server is the bottleneck.

Bounded: at most `max_in_flight` requests are outstanding; a request due while the bound is hit is
not sent and counts as a client-visible error (`overflow`), never delayed (that would close the
loop). Timeouts and connection errors are client-visible errors too; an HTTP status >= 500 is one.

Used by `foresight bench lb` and to record training data under faults.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

ERROR_KINDS = ("http_5xx", "timeout", "connection", "overflow")


def poisson_schedule(rate_rps: float, duration_s: float, seed: int) -> list[float]:
    """Send times (seconds from the start, ascending) of a Poisson process of `rate_rps` over
    `duration_s`: exponential gaps drawn from `seed`, so the same seed gives the same times."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate ({rate_rps}) and duration ({duration_s}) must be positive")
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate_rps)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_rps)
    return out


@dataclass(frozen=True)
class RequestRecord:
    """One scheduled request. `latency_ms` counts from the scheduled time to the answer (or to the
    moment the client gave up); `status` is 0 when no HTTP answer came; `error` is one of
    `ERROR_KINDS` or None; `instance` is the backend's `X-Instance` header when it answered."""

    scheduled_s: float
    lag_ms: float
    latency_ms: float
    status: int
    error: str | None
    instance: str = ""
    wall_ms: int = 0  # epoch ms of the scheduled send time (to join with feature windows)


@dataclass
class LoadResult:
    url: str
    rate_rps: float
    duration_s: float
    seed: int
    records: list[RequestRecord] = field(default_factory=list)
    started_wall_ms: int = 0
    elapsed_s: float = 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of unsorted `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass(frozen=True)
class LoadSummary:
    scheduled: int
    ok: int
    errors: dict[str, int]
    error_pct: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    lag_p99_ms: float
    achieved_rps: float
    by_instance: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {"scheduled": self.scheduled, "ok": self.ok, "errors": dict(self.errors),
                "error_pct": round(self.error_pct, 4), "p50_ms": round(self.p50_ms, 2),
                "p90_ms": round(self.p90_ms, 2), "p99_ms": round(self.p99_ms, 2), "max_ms": round(self.max_ms, 2),
                "lag_p99_ms": round(self.lag_p99_ms, 2), "achieved_rps": round(self.achieved_rps, 2),
                "by_instance": dict(sorted(self.by_instance.items()))}


def summarize(result: LoadResult) -> LoadSummary:
    """Latency percentiles over every scheduled request that was sent (an error's latency is the time
    until the client gave up: a timeout counts at the timeout), errors by kind, and who answered."""
    recs = result.records
    errors = {kind: 0 for kind in ERROR_KINDS}
    by_instance: dict[str, int] = {}
    for r in recs:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
        if r.instance:
            by_instance[r.instance] = by_instance.get(r.instance, 0) + 1
    sent = [r.latency_ms for r in recs if r.error != "overflow"]
    n_err = sum(errors.values())
    return LoadSummary(
        scheduled=len(recs), ok=len(recs) - n_err, errors=errors,
        error_pct=100.0 * n_err / len(recs) if recs else 0.0,
        p50_ms=percentile(sent, 50), p90_ms=percentile(sent, 90), p99_ms=percentile(sent, 99),
        max_ms=max(sent) if sent else math.nan,
        lag_p99_ms=percentile([r.lag_ms for r in recs if r.error != "overflow"], 99),
        achieved_rps=len(sent) / result.elapsed_s if result.elapsed_s else 0.0, by_instance=by_instance,
    )


Progress = Callable[[float, int, int], None]  # (seconds elapsed, requests done, errors so far)


async def run_load(url: str, schedule: Sequence[float], *, timeout_s: float = 5.0, max_in_flight: int = 256,
                   progress: Progress | None = None, progress_every_s: float = 5.0, rate_rps: float = 0.0,
                   seed: int = 0) -> LoadResult:
    """Send a GET to `url` at each time of `schedule` (seconds from now); wait for the last answer."""
    duration = schedule[-1] if schedule else 0.0
    result = LoadResult(url=url, rate_rps=rate_rps, duration_s=duration, seed=seed)
    slots: list[RequestRecord | None] = [None] * len(schedule)
    in_flight = 0
    done = 0
    n_errors = 0
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # No connection limit of aiohttp's own: the in-flight bound above is the only one, and it is counted.
    connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    wall0_ms = int(time.time() * 1000)
    result.started_wall_ms = wall0_ms

    async def one(i: int, at: float, session: aiohttp.ClientSession) -> None:
        nonlocal in_flight, done, n_errors
        sent = loop.time()
        status, error, instance = 0, None, ""
        try:
            async with session.get(url) as resp:
                await resp.read()
                status = resp.status
                instance = resp.headers.get("X-Instance", "")
                if status >= 500:
                    error = "http_5xx"
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError):
            error = "connection"
        end = loop.time()
        slots[i] = RequestRecord(scheduled_s=at, lag_ms=(sent - t0 - at) * 1000, latency_ms=(end - t0 - at) * 1000,
                                 status=status, error=error, instance=instance, wall_ms=wall0_ms + round(at * 1000))
        in_flight -= 1
        done += 1
        n_errors += error is not None

    tasks: set[asyncio.Task[None]] = set()
    next_report = progress_every_s
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for i, at in enumerate(schedule):
            delay = t0 + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if progress is not None and at >= next_report:
                progress(at, done, n_errors)
                next_report += progress_every_s
            if in_flight >= max_in_flight:
                slots[i] = RequestRecord(scheduled_s=at, lag_ms=0.0, latency_ms=0.0, status=0, error="overflow",
                                         wall_ms=wall0_ms + round(at * 1000))
                done += 1
                n_errors += 1
                continue
            in_flight += 1
            task = asyncio.create_task(one(i, at, session))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    result.elapsed_s = loop.time() - t0
    result.records = [r for r in slots if r is not None]
    if progress is not None:
        progress(result.elapsed_s, done, n_errors)
    return result


def run_poisson(url: str, rate_rps: float, duration_s: float, seed: int, *, timeout_s: float = 5.0,
                max_in_flight: int = 256, progress: Progress | None = None) -> LoadResult:
    """Synchronous entry: the schedule of (`rate_rps`, `duration_s`, `seed`) against `url`."""
    schedule = poisson_schedule(rate_rps, duration_s, seed)
    result = asyncio.run(run_load(url, schedule, timeout_s=timeout_s, max_in_flight=max_in_flight,
                                  progress=progress, rate_rps=rate_rps, seed=seed))
    result.duration_s = duration_s
    return result
