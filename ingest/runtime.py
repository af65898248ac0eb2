"""How an ingest process lives: one asyncio loop until SIGTERM/SIGINT, Prometheus metrics beside it."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

from prometheus_client import start_http_server

from infra.core.settings import LOOPBACK

log = logging.getLogger(__name__)


GC_THRESHOLD = (20_000, 50, 100)


def tune_gc() -> None:
    """Collect less often: parsing makes a few short-lived dicts per line, and with Python's default
    first-generation threshold (700) the collector ran every ~200 lines, ~8% of an ingest core.
    Long-lived objects (imports, settings) are frozen so full collections skip them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]], *,
                        metrics_port: int | None = None, metrics_addr: str = LOOPBACK) -> None:
    """Run `serve(stop)` until SIGTERM/SIGINT sets `stop`; optionally serve Prometheus metrics meanwhile."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    tune_gc()
    server = thread = None
    if metrics_port is not None:
        server, thread = start_http_server(metrics_port, addr=metrics_addr)
        log.info("ingest: metrics on http://%s:%d/metrics", metrics_addr, metrics_port)
    try:
        asyncio.run(main())
    finally:
        if server is not None and thread is not None:
            server.shutdown()
            thread.join(timeout=5)
