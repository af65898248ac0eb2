"""Request-rate series of one service from ClickHouse: `features` (the stream's windows) or
`access_events` (the raw record, one row per request), over a time range or all of it."""

from __future__ import annotations

import numpy as np
from clickhouse_driver import Client

from infra.core.features_table import read_minute_requests
from infra.core.record_tables import access_minute_requests
from training.series import STEP_S, RateSeries

# The stream emits no window for a quiet stretch, so a short hole is zero traffic; a long one is
# more likely the pipeline being down, which must not teach the model a lull.
DEFAULT_MAX_QUIET_MIN = 5


def minutes_to_series(rows: list[tuple[int, int]], max_quiet_min: int = DEFAULT_MAX_QUIET_MIN) -> RateSeries:
    """Place (minute start unix s, requests) rows on a minute grid: holes up to `max_quiet_min`
    minutes are quiet (0 req/s), longer ones missing (NaN)."""
    if not rows:
        raise ValueError("no feature windows for this service")
    minutes = np.array([r[0] for r in rows], dtype=np.int64)
    requests = np.array([r[1] for r in rows], dtype=np.float64)
    first = int(minutes[0])
    idx = (minutes - first) // STEP_S
    n = int(idx[-1]) + 1
    values = np.full(n, np.nan)
    values[idx] = requests / STEP_S
    gap_start = np.flatnonzero(np.diff(idx) > 1)
    for g in gap_start:
        lo, hi = int(idx[g]) + 1, int(idx[g + 1])
        if hi - lo <= max_quiet_min:
            values[lo:hi] = 0.0
    second_index = np.arange(n, dtype=np.int64) * STEP_S
    return RateSeries(values=values, start_unix_s=float(first), second_index=second_index, n_seconds=n * STEP_S)


def load_service(client: Client, database: str, service: str, max_quiet_min: int = DEFAULT_MAX_QUIET_MIN, *,
                 table: str = "features", start_s: int | None = None, end_s: int | None = None) -> RateSeries:
    """`table` is `features` or `access_events`; [start_s, end_s) bounds the minutes read (either may be open)."""
    if table == "access_events":
        rows = access_minute_requests(client, database, service, start_s, end_s)
    elif table == "features":
        bounded = start_s is not None or end_s is not None
        rows = read_minute_requests(client, database, service, *((start_s or 0, end_s or 2**32 - 1) if bounded
                                                                 else (None, None)))
    else:
        raise ValueError(f"cannot train from table {table!r}: features or access_events")
    return minutes_to_series(rows, max_quiet_min)
