"""Prometheus scraper: every target on its own interval, samples to a metrics sink in batches.

Parsing is prometheus_client's (the maintained parser of the exposition format), not ours. Each
sample becomes a `MetricSample` stamped with the scrape time, so the samples of one scrape line up
in the feature windows. Service and instance follow HAProxy's exporter first (the `proxy` label is
the service and `server` the instance), else the `service` and `instance` labels (the pool
backends' gauges), else the configured service and the target's `host:port`. NaN and infinite
values are skipped (JSON cannot carry them, and HAProxy reports NaN for every limit that is not set).

A failed scrape (refused, timeout, HTTP error, unparsable body) is logged and counted, and the
next one happens on schedule: one broken target must not stop the others.

Besides its static targets, the scraper can discover more (`discover`, e.g. the service registry's
running instances, `registry_targets`): it lists them every `rediscover_every` intervals, starts
scraping a new one at once and stops one that left after its scrape in progress. A failed listing
is counted and the targets found last keep being scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from infra.core.service_registry import RegistryEntry
from infra.core.settings import IngestSettings
from ingest.parsers.base import now_ms
from ingest.runtime import run_until_signalled
from ingest.schemas import MetricSample
from ingest.sinks.base import MetricSink

log = logging.getLogger(__name__)

MetricsHandler = Callable[[list[MetricSample]], Awaitable[None] | None]
Discover = Callable[[], Sequence[str]]  # blocking (run in a thread): the URLs to scrape besides the static ones
ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"  # the classic text format, which every exporter has
MAX_BODY_BYTES = 32 * 1024 * 1024
BATCH_MAX = 1000
FLUSH_TIMEOUT_S = 10.0

SCRAPES = Counter("foresight_ingest_scrapes", "Scrapes by target and outcome (ok or failed).", ["target", "outcome"])
SAMPLES = Counter("foresight_ingest_scraped_samples", "Samples handed to the metrics sink.", ["target"])
NONFINITE = Counter("foresight_ingest_scraped_nonfinite", "Samples skipped for a NaN or infinite value.", ["target"])
DISCOVERIES = Counter("foresight_ingest_scrape_discoveries", "Listings of discovered targets by outcome.", ["outcome"])
SCRAPED_STATES = ("ready", "draining")  # an instance being drained still serves: its gauges still matter


def registry_targets(entries: Iterable[RegistryEntry], path: str = "/metrics") -> list[str]:
    """The metrics URL of every registered instance still serving (ready or draining), sorted."""
    urls = set()
    for e in entries:
        if e.record is not None and e.record.state in SCRAPED_STATES:
            host = e.record.address
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
            urls.add(f"http://{host}:{e.record.port}{path}")
    return sorted(urls)


class ScrapeError(Exception):
    """A scrape that produced nothing; the message says why."""


def target_instance(url: str) -> str:
    """`host:port` of a target URL, the port made explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "unknown"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def samples_from_exposition(text: str, ts_ms: int, *, service: str, instance: str,
                            openmetrics: bool = False) -> tuple[list[MetricSample], int]:
    """Samples of an exposition body and how many were skipped as non-finite; ValueError if malformed."""
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    out: list[MetricSample] = []
    skipped = 0
    for family in parse(text):  # a generator: a syntax error surfaces while iterating
        for s in family.samples:
            value = float(s.value)
            if not math.isfinite(value):
                skipped += 1
                continue
            labels = {k: str(v) for k, v in s.labels.items()}
            out.append(MetricSample.model_construct(
                v=1, ts=ts_ms, service=labels.get("proxy") or labels.get("service") or service,
                instance=labels.get("server") or labels.get("instance") or instance,
                name=s.name, value=value, labels=labels))
    return out, skipped


class PrometheusScraper:
    """Scrapes `targets` (and what `discover` lists, re-listed every `rediscover_every` intervals) every
    `interval_s` and hands the samples to `on_samples`, `batch_max` at a time."""

    def __init__(self, targets: Sequence[str], on_samples: MetricsHandler, *, interval_s: float, service: str,
                 timeout_s: float | None = None, batch_max: int = BATCH_MAX, max_body_bytes: int = MAX_BODY_BYTES,
                 client: httpx.AsyncClient | None = None, discover: Discover | None = None,
                 rediscover_every: int = 5) -> None:
        if not targets and discover is None:
            raise ValueError("no scrape targets")
        if rediscover_every < 1:
            raise ValueError("rediscover_every must be at least 1")
        self.targets = list(targets)
        self.discover = discover
        self.rediscover_every = rediscover_every
        self.discovered: list[str] = []  # the last listing that succeeded
        self.on_samples = on_samples
        self.interval_s = interval_s
        self.service = service
        # Like Prometheus: the timeout follows the interval, but never so short that a busy target fails.
        self.timeout_s = timeout_s if timeout_s is not None else min(10.0, max(1.0, interval_s))
        self.batch_max = batch_max
        self.max_body_bytes = max_body_bytes
        self._client = client

    async def run(self, stop: asyncio.Event) -> None:
        """Scrape every target on schedule until `stop`; failures are counted, never raised."""
        own = self._client is None
        client = self._client or httpx.AsyncClient(timeout=self.timeout_s)
        running: dict[str, tuple[asyncio.Event, asyncio.Future[None]]] = {}
        leaving: set[asyncio.Future[None]] = set()  # targets that left, finishing their scrape in progress
        try:
            while True:
                wanted = dict.fromkeys([*self.targets, *await self._discover()])
                for url in wanted.keys() - running.keys():
                    halt = asyncio.Event()
                    running[url] = (halt, asyncio.ensure_future(self._loop(client, url, halt)))
                for url in running.keys() - wanted.keys():  # left: stops after the scrape in progress
                    halt, task = running.pop(url)
                    halt.set()
                    leaving.add(task)
                    task.add_done_callback(leaving.discard)
                if self.discover is None:
                    await stop.wait()
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s * self.rediscover_every)
                if stop.is_set():
                    break
        finally:
            for halt, _ in running.values():
                halt.set()
            await asyncio.gather(*(task for _, task in running.values()), *leaving, return_exceptions=True)
            if own:
                await client.aclose()

    async def _discover(self) -> list[str]:
        """The discovered targets now; on a failed listing, the last ones found (counted, logged)."""
        if self.discover is None:
            return []
        try:
            found = list(await asyncio.to_thread(self.discover))
        except Exception as e:  # registry down: keep scraping what it listed last
            DISCOVERIES.labels(outcome="failed").inc()
            log.warning("listing the scrape targets failed (keeping %d found before): %s", len(self.discovered), e)
            return self.discovered
        DISCOVERIES.labels(outcome="ok").inc()
        if set(found) != set(self.discovered):
            log.info("ingest: discovered scrape targets now %s", ", ".join(found) or "none")
        self.discovered = found
        return found

    async def scrape(self, client: httpx.AsyncClient, url: str) -> int:
        """One scrape of `url`; returns the samples handed over. Raises ScrapeError, or the handler's error."""
        ts = now_ms()
        body, openmetrics = await self._fetch(client, url)
        try:
            text = body.decode("utf-8")
            samples, skipped = samples_from_exposition(text, ts, service=self.service,
                                                       instance=target_instance(url), openmetrics=openmetrics)
        except ValueError as e:  # UnicodeDecodeError is one too
            raise ScrapeError(f"unparsable exposition: {e}") from e
        if skipped:
            NONFINITE.labels(target=url).inc(skipped)
        for start in range(0, len(samples), self.batch_max):
            result = self.on_samples(samples[start:start + self.batch_max])
            if inspect.isawaitable(result):
                await result
        SAMPLES.labels(target=url).inc(len(samples))
        return len(samples)

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> tuple[bytes, bool]:
        try:
            async with client.stream("GET", url, headers={"Accept": ACCEPT}, timeout=self.timeout_s) as resp:
                if resp.status_code != 200:
                    raise ScrapeError(f"HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():  # decompressed, checked as it arrives
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise ScrapeError(f"body over {self.max_body_bytes} bytes")
                is_om = resp.headers.get("content-type", "").startswith("application/openmetrics-text")
                return bytes(body), is_om
        except httpx.HTTPError as e:
            raise ScrapeError(f"{type(e).__name__}: {e}") from e

    async def _loop(self, client: httpx.AsyncClient, url: str, stop: asyncio.Event) -> None:
        """Scrape `url` on schedule until `stop` (the process stops, or the target left)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            try:
                n = await self.scrape(client, url)
                SCRAPES.labels(target=url, outcome="ok").inc()
                log.debug("scrape %s: %d samples", url, n)
            except Exception as e:  # a down target or a failing sink: next time, on schedule
                SCRAPES.labels(target=url, outcome="failed").inc()
                log.warning("scrape %s failed: %s", url, e)
            next_at += self.interval_s
            now = loop.time()
            if next_at <= now:  # slower than the interval: skip the missed rounds, keep the cadence
                next_at += math.ceil((now - next_at) / self.interval_s) * self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - now)


async def serve_scrape_ingest(ingest: IngestSettings, sink: MetricSink, stop: asyncio.Event, *,
                              default_targets: Sequence[str] = (), service: str | None = None,
                              client: httpx.AsyncClient | None = None, discover: Discover | None = None) -> None:
    """Scrape `ingest.scrape_targets` (else `default_targets`), and what `discover` lists, into `sink`
    until `stop`, then flush."""
    targets = list(ingest.scrape_targets) or list(default_targets)
    scraper = PrometheusScraper(targets, sink.send_metrics, interval_s=ingest.scrape_interval_s,
                                service=service or ingest.default_service, client=client, discover=discover,
                                rediscover_every=ingest.scrape_rediscover_every)
    log.info("ingest: scraping %s%s every %.1fs", ", ".join(targets),
             " and the registry's instances" if discover else "", ingest.scrape_interval_s)
    try:
        await scraper.run(stop)
    finally:
        sink.flush(timeout=FLUSH_TIMEOUT_S)


def run_scrape_ingest(ingest: IngestSettings, sink: MetricSink, *, default_targets: Sequence[str] = (),
                      service: str | None = None, metrics_port: int | None = None,
                      discover: Discover | None = None) -> None:
    """The `ingest scrape` process: until SIGTERM/SIGINT, then flushes `sink` (the caller closes it)."""
    run_until_signalled(lambda stop: serve_scrape_ingest(ingest, sink, stop, default_targets=default_targets,
                                                         service=service, discover=discover),
                        metrics_port=metrics_port)
    log.info("ingest: scrape stopped")
