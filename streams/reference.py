"""Offline feature windows computed straight from raw access events: the yardstick for the worker.

Deliberately shares no code with `streams/windows.py`: plain counting per window key and exact
quantiles from the sorted latencies. `compare_windows` then checks a worker's rows (read back from
ClickHouse) against it: every window present once, counts exactly equal, latency quantiles
within the sketch's relative accuracy of the exact value at the sketch's own rank rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from infra.core.contracts import SERVICE_WIDE

QUANTILES = (("latency_p50_ms", 0.5), ("latency_p90_ms", 0.9), ("latency_p99_ms", 0.99))
COUNTS = ("requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "bytes_sent")

WindowKey = tuple[str, str, int]  # service, instance (or `*`), window start in epoch seconds


@dataclass
class RefWindow:
    requests: int = 0
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    bytes_sent: int = 0
    latencies: list[float] = field(default_factory=list)


class WindowRow(BaseModel):
    """One `features` row as read back from ClickHouse (window bounds in epoch seconds)."""

    service: str
    instance: str
    window_start: int
    window_end: int
    requests: int
    rate: float
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    bytes_sent: int
    late_events: int

    @property
    def key(self) -> WindowKey:
        return (self.service, self.instance, self.window_start)


ROW_COLUMNS = tuple(WindowRow.model_fields)


def reference_windows(events: Iterable[Mapping[str, Any]], window_s: int,
                      instance_window_s: int | None = None) -> dict[WindowKey, RefWindow]:
    """Tumbling event-time windows per service/instance (`instance_window_s` long, default `window_s`)
    and per service (`window_s`), every event counted once: a repeat of an id already counted (ingest
    delivers at least once) is not counted again."""
    sizes = {False: instance_window_s or window_s, True: window_s}
    out: dict[WindowKey, RefWindow] = {}
    seen: set[str] = set()
    for ev in events:
        eid = ev.get("id")
        if eid is not None:
            if eid in seen:
                continue
            seen.add(eid)
        second = int(ev["ts"]) // 1000
        status = int(ev["status"])
        for instance in (ev["instance"], SERVICE_WIDE):
            size = sizes[instance == SERVICE_WIDE]
            w = out.setdefault((ev["service"], instance, second // size * size), RefWindow())
            w.requests += 1
            if 200 <= status < 300:
                w.status_2xx += 1
            elif 300 <= status < 400:
                w.status_3xx += 1
            elif 400 <= status < 500:
                w.status_4xx += 1
            elif 500 <= status < 600:
                w.status_5xx += 1
            w.bytes_sent += int(ev["bytes_sent"])
            w.latencies.append(float(ev["latency_ms"]))
    for w in out.values():
        w.latencies.sort()
    return out


def quantile_bounds(ordered: list[float], q: float) -> tuple[float, float]:
    """The exact value a rank-based sketch targets for quantile `q`: the one at rank q*(n-1) rounded down.

    That is DDSketch's rule. When float rounding leaves the rank a hair under an integer
    (0.9*(n-1) = x.99999...), the next value is accepted too, so a correct sketch cannot fail.
    """
    rank = q * (len(ordered) - 1)
    return ordered[math.floor(rank)], ordered[min(len(ordered) - 1, math.floor(rank + 1e-9))]


def compare_windows(reference: Mapping[WindowKey, RefWindow], rows: Iterable[WindowRow], window_s: int,
                    relative_accuracy: float, instance_window_s: int | None = None) -> list[str]:
    """Every difference between the worker's rows and the reference, one line each (empty: equal);
    instance rows last `instance_window_s` (default `window_s`), service-wide ones `window_s`."""
    problems: list[str] = []
    seen: dict[WindowKey, WindowRow] = {}
    for row in rows:
        if row.key in seen:
            problems.append(f"{row.key}: window present twice")
        seen[row.key] = row
    for key in sorted(set(reference) - set(seen)):
        problems.append(f"{key}: missing ({reference[key].requests} requests in the reference)")
    for key in sorted(set(seen) - set(reference)):
        problems.append(f"{key}: not in the reference ({seen[key].requests} requests)")
    for key in sorted(set(seen) & set(reference)):
        row, ref = seen[key], reference[key]
        size = window_s if row.instance == SERVICE_WIDE else instance_window_s or window_s
        if row.window_end - row.window_start != size:
            problems.append(f"{key}: window of {row.window_end - row.window_start} s, expected {size}")
        for name in COUNTS:
            if getattr(row, name) != getattr(ref, name):
                problems.append(f"{key}: {name} {getattr(row, name)} != reference {getattr(ref, name)}")
        if not math.isclose(row.rate, ref.requests / size, rel_tol=1e-9):
            problems.append(f"{key}: rate {row.rate} != {ref.requests / size}")
        for name, q in QUANTILES:
            lo, hi = quantile_bounds(ref.latencies, q)
            got = getattr(row, name)
            if not lo * (1 - relative_accuracy) - 1e-9 <= got <= hi * (1 + relative_accuracy) + 1e-9:
                problems.append(f"{key}: {name} {got} outside [{lo}, {hi}] +-{relative_accuracy:.0%}")
    return problems
