"""Event-time tumbling windows per service/instance and per service (`*`), closed by a watermark.

Pure state and arithmetic, no I/O, so the Faust agent, tests and offline reference all share it.
A window [start, end) closes once the watermark (latest event time minus the allowed lateness,
or the wall clock when the stream is idle) passes its end. Events for a closed window are
counted as late on their key and reported with that key's next window, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch

from streams.schemas import FeatureWindow

SERVICE_WIDE = "*"
SKETCH_RELATIVE_ACCURACY = 0.01


@dataclass
class _Acc:
    requests: int = 0
    by_class: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # 2xx 3xx 4xx 5xx
    bytes_sent: int = 0
    latency: DDSketch = field(default_factory=lambda: DDSketch(SKETCH_RELATIVE_ACCURACY))

    def add(self, status: int, latency_ms: float, bytes_sent: int) -> None:
        self.requests += 1
        cls = status // 100 - 2
        if 0 <= cls < 4:
            self.by_class[cls] += 1
        self.bytes_sent += bytes_sent
        self.latency.add(max(latency_ms, 0.0))


class WindowAggregator:
    def __init__(self, window_s: int, allowed_lateness_s: float) -> None:
        self.window_ms = window_s * 1000
        self.lateness_ms = int(allowed_lateness_s * 1000)
        self._open: dict[tuple[str, str, int], _Acc] = {}
        self._closed_before: dict[tuple[str, str], int] = {}  # per key: windows starting before this are closed
        self._late: dict[tuple[str, str], int] = {}
        self.max_event_ts = 0
        self.late_total = 0

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Add decoded access events; returns how many were late."""
        late = 0
        for ev in events:
            ts = int(ev["ts"])
            start = ts - ts % self.window_ms
            service, instance = ev["service"], ev["instance"]
            for key in ((service, instance), (service, SERVICE_WIDE)):
                if start < self._closed_before.get(key, 0):
                    self._late[key] = self._late.get(key, 0) + 1
                    if key[1] != SERVICE_WIDE:
                        late += 1
                    continue
                acc = self._open.get((*key, start))
                if acc is None:
                    acc = self._open[(*key, start)] = _Acc()
                acc.add(int(ev["status"]), float(ev["latency_ms"]), int(ev["bytes_sent"]))
            if ts > self.max_event_ts:
                self.max_event_ts = ts
        self.late_total += late
        return late

    def watermark(self, now_ms: int | None = None) -> int:
        """Event-time watermark; with `now_ms` (idle stream) the wall clock may advance it."""
        mark = self.max_event_ts - self.lateness_ms
        if now_ms is not None:
            mark = max(mark, now_ms - self.lateness_ms)
        return mark

    def close(self, watermark: int, emitted_at: int) -> list[FeatureWindow]:
        """Remove and return every window whose end is at or before `watermark`."""
        done = sorted(k for k in self._open if k[2] + self.window_ms <= watermark)
        out = []
        for service, instance, start in done:
            acc = self._open.pop((service, instance, start))
            key = (service, instance)
            self._closed_before[key] = max(self._closed_before.get(key, 0), start + self.window_ms)
            out.append(self._to_window(service, instance, start, acc, self._late.pop(key, 0), emitted_at))
        return out

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def _to_window(self, service: str, instance: str, start: int, acc: _Acc, late: int,
                   emitted_at: int) -> FeatureWindow:
        q = acc.latency
        return FeatureWindow(
            window_start=start, window_end=start + self.window_ms, service=service, instance=instance,
            requests=acc.requests, rate=acc.requests / (self.window_ms / 1000),
            status_2xx=acc.by_class[0], status_3xx=acc.by_class[1], status_4xx=acc.by_class[2],
            status_5xx=acc.by_class[3],
            latency_p50_ms=float(q.get_quantile_value(0.5) or 0.0),
            latency_p90_ms=float(q.get_quantile_value(0.9) or 0.0),
            latency_p99_ms=float(q.get_quantile_value(0.99) or 0.0),
            bytes_sent=acc.bytes_sent, late_events=late, emitted_at=emitted_at,
        )
