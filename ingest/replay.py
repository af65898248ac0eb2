"""Replay a per-second request-rate trace (the NASA 1995 one) as load: real HTTP or Kafka events.

The trace is integers separated by whitespace, one per second (plain, gzip or bzip2, told by
their first bytes), read as a stream: the NASA trace has 5M values. Trace second k starts at wall
time k / speedup and its requests are spread evenly over it, so the trace's shape survives the speed-up.
- `to="http"`: GET `base_url` with httpx, at most `concurrency` requests in flight on a bounded
  connection pool; a request still waiting for a free slot delays the next ones (the achieved rate
  then says the target or this client could not keep up). Errors: transport failures and 5xx.
- `to="kafka"`: synthetic Combined log lines (event time = now, a small pool of clients and NASA
  paths, a unique `?r=` query so no two share an event id, nginx-style `rt=` latency), parsed by
  the CLF parser and sent to the sink in batches (500 events or 0.1 s); rejections count as errors.
Bounds: `max_rps` caps the wall-clock rate (requests above it are dropped, and counted), `duration_s`
the wall time, `start` skips that many trace seconds (e.g. 2,381,545: the August part).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from ingest.file_ingest import open_log
from ingest.parsers.base import LineParser
from ingest.parsers.clf import CLFParser
from ingest.routing import Router
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.base import EventSink

REPLAY_SERVICE = "replay"
DEFAULT_CONCURRENCY = 64
REQUEST_TIMEOUT_S = 10.0
SEND_EVENTS = 500
SEND_INTERVAL_S = 0.1
_CHUNK = 1 << 16
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PATHS = ("/", "/shuttle/countdown/", "/images/NASA-logosmall.gif", "/images/KSC-logosmall.gif",
          "/shuttle/missions/sts-71/mission-sts-71.html", "/history/apollo/", "/images/MOSAIC-logosmall.gif",
          "/shuttle/countdown/liftoff.html", "/ksc.html", "/images/ksclogo-medium.gif")
_CLIENTS = tuple(f"10.0.{i // 8}.{i % 8 + 1}" for i in range(16))


@dataclass
class ReplaySummary:
    seconds_replayed: int = 0  # trace seconds whose slot started
    requests_sent: int = 0
    errors: int = 0
    dropped_by_cap: int = 0
    wall_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP mode
    # HTTP mode, one per answered request: (wall time it was sent, latency ms, failed); not in as_dict()
    answers: list[tuple[float, float, bool]] = field(default_factory=list, repr=False)

    @property
    def achieved_rps(self) -> float:
        return self.requests_sent / self.wall_s if self.wall_s > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        """The client-side latency quantile `q` of the answered requests (HTTP mode)."""
        if not self.answers:
            return None
        ordered = sorted(a[1] for a in self.answers)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "answers"}
        p50, p99 = self.latency_ms(0.5), self.latency_ms(0.99)
        return {**out, "wall_s": round(self.wall_s, 3), "achieved_rps": round(self.achieved_rps, 2),
                "latency_p50_ms": None if p50 is None else round(p50, 2),
                "latency_p99_ms": None if p99 is None else round(p99, 2)}


def read_trace(path: str | Path, start: int = 0) -> Generator[int, None, None]:
    """The trace's values from index `start`, streamed; a token that is not a count is a ValueError."""
    f, disk = open_log(path)
    try:
        carry = b""
        index = 0
        while chunk := f.read(_CHUNK):
            tokens = (carry + chunk).split()
            # a chunk ending mid-number: keep its last token for the next chunk
            carry = tokens.pop() if tokens and not chunk[-1:].isspace() else b""
            if index + len(tokens) <= start:  # skipping: no per-value work
                index += len(tokens)
                continue
            for token in tokens:
                if index >= start:
                    yield _count(token, index)
                index += 1
        if carry and index >= start:
            yield _count(carry, index)
    finally:
        f.close()
        disk.close()


def replay(trace_path: str | Path, *, speedup: float = 1.0, to: Literal["http", "kafka"] = "http",
           base_url: str | None = None, sink: EventSink | None = None, start: int = 0,
           duration_s: float | None = None, max_rps: float | None = None, progress: bool = False,
           concurrency: int = DEFAULT_CONCURRENCY, parser: LineParser | None = None,
           scale: float = 1.0, start_at: float | None = None) -> ReplaySummary:
    """Replay `trace_path` to `base_url` (http) or `sink` (kafka) until the trace, or `duration_s`, ends.

    `parser` turns the synthetic lines into events in kafka mode (default: CLF, service `replay`).
    `scale` multiplies each trace second's requests (rounded at random, seeded, so the mean is kept).
    `start_at` (epoch s) is when trace second `start` is sent, for a caller that maps wall time to trace
    time; None: as soon as the file is open.
    """
    if speedup <= 0:
        raise ValueError("speedup must be positive")
    if scale <= 0:
        raise ValueError("scale must be positive")
    if max_rps is not None and max_rps <= 0:
        raise ValueError("max_rps must be positive")
    if to not in ("http", "kafka"):
        raise ValueError(f"unknown target {to!r}; choose http or kafka")
    if to == "http" and not base_url:
        raise ValueError("http replay needs base_url")
    if to == "kafka" and sink is None:
        raise ValueError("kafka replay needs a sink")
    counts = read_trace(trace_path, start)
    values = counts if scale == 1 else _scaled(counts, scale)
    first = next(values, None)  # skip to `start` (and open the file) before the clock starts
    slots = _Pacer(itertools.chain(() if first is None else (first,), values), speedup, max_rps)
    bar = _Bar(duration_s) if progress else None
    summary = ReplaySummary()
    try:
        if base_url is not None and to == "http":
            asyncio.run(_replay_http(slots, base_url, concurrency, duration_s, summary, bar, start_at))
        elif sink is not None:
            _replay_kafka(slots, sink, parser or CLFParser(Router([], REPLAY_SERVICE)), start, duration_s,
                          summary, bar, start_at)
    finally:
        counts.close()
        if bar is not None:
            bar.close()
    summary.dropped_by_cap = slots.dropped
    return summary


def _scaled(values: Iterator[int], scale: float) -> Generator[int, None, None]:
    rng = random.Random(0)
    for v in values:
        x = v * scale
        yield int(x) + (rng.random() < x - int(x))


class _Pacer:
    """(trace second, wall start offset, requests to send) per trace second, with the `max_rps` cap.

    The cap is a token bucket refilled at `max_rps` per wall second and holding at most one slot's
    worth (plus one): a quiet stretch does not buy a burst later.
    """

    def __init__(self, values: Iterator[int], speedup: float, max_rps: float | None) -> None:
        self.values = values
        self.slot_s = 1.0 / speedup
        self.per_slot = None if max_rps is None else max_rps * self.slot_s
        self.tokens = 0.0
        self.dropped = 0

    def __iter__(self) -> Iterator[tuple[int, float, int]]:
        for k, wanted in enumerate(self.values):
            n = wanted
            if self.per_slot is not None:
                self.tokens = min(self.tokens + self.per_slot, self.per_slot + 1.0)
                n = min(wanted, int(self.tokens))
                self.tokens -= n
                self.dropped += wanted - n
            yield k, k * self.slot_s, n


def _wait_for_start(start_at: float | None) -> float:
    """Seconds until `start_at` (epoch s), 0 when it is None or past."""
    return 0.0 if start_at is None else max(0.0, start_at - time.time())


async def _replay_http(slots: _Pacer, base_url: str, concurrency: int, duration_s: float | None,
                       summary: ReplaySummary, bar: _Bar | None, start_at: float | None = None) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    free = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(client: httpx.AsyncClient) -> None:
        sent, began = time.time(), loop.time()
        failed = True
        try:
            response = await client.get(base_url)
            summary.statuses[response.status_code] = summary.statuses.get(response.status_code, 0) + 1
            failed = response.status_code >= 500
            if failed:
                summary.errors += 1
        except httpx.HTTPError:
            summary.errors += 1
        finally:
            summary.answers.append((sent, (loop.time() - began) * 1000, failed))
            free.release()

    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        await asyncio.sleep(_wait_for_start(start_at))
        t0 = loop.time()
        try:
            for _k, offset, n in slots:
                if duration_s is not None and (offset >= duration_s or loop.time() - t0 >= duration_s):
                    break
                await _sleep_until_async(loop.time, t0 + offset)
                summary.seconds_replayed += 1
                for j in range(n):
                    await _sleep_until_async(loop.time, t0 + offset + j * slots.slot_s / n)
                    await free.acquire()
                    if duration_s is not None and loop.time() - t0 >= duration_s:
                        free.release()
                        break
                    task = loop.create_task(one(client))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    summary.requests_sent += 1
                if bar is not None:
                    bar.update(loop.time() - t0, summary)
            if pending:
                await asyncio.wait(pending)
        finally:
            for task in pending:
                task.cancel()
            summary.wall_s = loop.time() - t0


def _replay_kafka(slots: _Pacer, sink: EventSink, parser: LineParser, start: int, duration_s: float | None,
                  summary: ReplaySummary, bar: _Bar | None, start_at: float | None = None) -> None:
    """Events leave in batches of up to SEND_EVENTS or every SEND_INTERVAL_S, as the ingest pipeline's do."""
    rng = random.Random(start)  # same trace range, same synthetic paths and sizes
    events: list[AccessEvent] = []
    time.sleep(_wait_for_start(start_at))
    t0 = last_send = time.monotonic()
    try:
        for k, offset, n in slots:
            if duration_s is not None and (offset >= duration_s or time.monotonic() - t0 >= duration_s):
                break
            _sleep_until(t0 + offset)
            summary.seconds_replayed += 1
            if n:
                date = _clf_date(datetime.now().astimezone())
                for j in range(n):
                    result = parser(synthetic_line(rng, date, start + k, j), None)
                    if isinstance(result, Rejection):
                        summary.errors += 1
                        sink.send_rejection(result)
                    else:
                        events.append(result)
                        summary.requests_sent += 1
            now = time.monotonic()
            if events and (len(events) >= SEND_EVENTS or now - last_send >= SEND_INTERVAL_S):
                sink.send_events(events)
                events, last_send = [], now
            if bar is not None:
                bar.update(now - t0, summary)
    finally:
        if events:
            sink.send_events(events)
        sink.flush()
        summary.wall_s = time.monotonic() - t0


def synthetic_line(rng: random.Random, date: str, second: int, n: int) -> bytes:
    """One Combined line with an nginx `rt=` latency; `?r=second.n` keeps every line (and id) distinct."""
    path = rng.choice(_PATHS)
    status = 200 if rng.random() < 0.93 else rng.choice((304, 404, 500))
    size = 0 if status == 304 else rng.randint(200, 60_000)
    rt = rng.lognormvariate(-4.0, 0.8)  # median ~18 ms
    return (f'{rng.choice(_CLIENTS)} - - [{date}] "GET {path}?r={second}.{n} HTTP/1.1" {status} {size} '
            f'"-" "foresight-replay/1" rt={rt:.3f}').encode()


def _clf_date(now: datetime) -> str:
    return f"{now:%d}/{_MONTHS[now.month - 1]}/{now:%Y:%H:%M:%S %z}"


def _count(token: bytes, index: int) -> int:
    if not token.isdigit():
        raise ValueError(f"trace value {index} is not a count: {token[:20]!r}")
    return int(token)


async def _sleep_until_async(clock: Callable[[], float], when: float) -> None:
    delay = when - clock()
    if delay > 0:
        await asyncio.sleep(delay)


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class _Bar:
    """Progress on stderr: by wall time when `duration_s` bounds the replay, else a running count."""

    def __init__(self, duration_s: float | None) -> None:
        import rich.console
        import rich.progress as rp

        self._progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.TimeElapsedColumn(),
                                     console=rich.console.Console(stderr=True))
        self._progress.start()
        self._task = self._progress.add_task("replay", total=duration_s)

    def update(self, elapsed_s: float, summary: ReplaySummary) -> None:
        self._progress.update(self._task, completed=elapsed_s, description=(
            f"replay: {summary.seconds_replayed} s of trace, {summary.requests_sent} sent, {summary.errors} errors"))

    def close(self) -> None:
        self._progress.stop()
