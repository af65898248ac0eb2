"""A service's recent request rate, per minute, from ClickHouse `features`.

The stream worker writes one service-wide row (`instance = '*'`) per window; summing a minute's
windows and dividing by 60 gives requests per second averaged over that minute, the series
forecast modules read. The worker emits no window for a minute without requests, so a gap after
the first observed minute counts as 0 req/s; minutes before it are unknown and left out. The
minute in progress is left out too (its windows are still arriving).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from infra.core.db import client
from infra.core.features_table import read_minute_requests
from infra.core.settings import ClickHouseSettings

STEP_S = 60


@dataclass(frozen=True)
class RateHistory:
    rates: list[float]  # req/s per minute, oldest first
    next_minute: float  # Unix time (s) of the minute after the last one


def per_minute_rates(rows: Iterable[tuple[int, int]], end_minute: int, minutes: int) -> RateHistory:
    """Rates of the `minutes` whole minutes before `end_minute` (Unix s, minute-aligned).

    `rows` are (minute start, requests in that minute). Starts at the first observed minute.
    """
    start = end_minute - minutes * STEP_S
    counts = {int(minute): int(requests) for minute, requests in rows if start <= int(minute) < end_minute}
    if not counts:
        return RateHistory([], float(end_minute))
    first = min(counts)
    rates = [counts.get(minute, 0) / STEP_S for minute in range(first, end_minute, STEP_S)]
    return RateHistory(rates, float(end_minute))


def read_rate_history(ch: ClickHouseSettings, service: str, minutes: int, now_s: float) -> RateHistory:
    """The last `minutes` whole minutes of `service` before `now_s`, from ClickHouse."""
    end_minute = math.floor(now_s / STEP_S) * STEP_S
    start = end_minute - minutes * STEP_S
    cl = client(ch)
    try:
        rows = read_minute_requests(cl, ch.database, service, start, end_minute)
    finally:
        cl.disconnect()
    return per_minute_rates(rows, end_minute, minutes)
