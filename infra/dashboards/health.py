"""Component health for the dashboard: the stack's own probes, read at most every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

from infra.core.settings import Settings
from infra.dashboards.data import ComponentHealth
from infra.stack.launcher import status


def cached_stack_health(s: Settings, max_age_s: float = 10.0) -> Callable[[], list[ComponentHealth]]:
    """Probing every component takes a moment; many open pages must not multiply it."""
    cache: list[tuple[float, list[ComponentHealth]]] = []

    def read() -> list[ComponentHealth]:
        if not cache or time.monotonic() - cache[0][0] > max_age_s:
            cache[:] = [(time.monotonic(), [ComponentHealth(name=c.name, state=c.state) for c in status(s)])]
        return cache[0][1]

    return read
