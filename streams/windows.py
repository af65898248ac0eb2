"""Event-time tumbling windows: the accumulator of one window, and an in-process aggregator.

Pure state and arithmetic, no I/O. `WindowAcc` is what the Faust worker keeps per open window
(serialisable, mergeable across instances); `WindowAggregator` is the single-process form over
every key at once (per instance and per service `*`), for tests and offline comparisons.
A window [start, end) closes once the watermark (latest event time minus the allowed lateness,
or the wall clock when the stream is idle) passes its end. Events for a closed window are
counted as late on their key and reported with that key's next window, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from infra.core.contracts import SERVICE_WIDE
from streams.schemas import FeatureWindow
from streams.sketch import SKETCH_RELATIVE_ACCURACY, new_sketch, quantile, sketch_from_dict, sketch_to_dict
from streams.sketch_batch import add_many

__all__ = [
    "RATIO_SIGNALS",
    "SATURATION_METRICS",
    "SKETCH_RELATIVE_ACCURACY",
    "WindowAcc",
    "WindowAggregator",
    "counter_delta",
]

# Metric samples -> window signal. HAProxy exporter samples are per server (`proxy` = service,
# `server` = instance); the pool backends' gauges carry `service` and `instance` labels.
SATURATION_METRICS = {
    "haproxy_server_current_sessions": "sessions",
    "haproxy_server_current_queue": "queue",
    "haproxy_server_connection_errors_total": "conn_errors",
    "haproxy_server_connection_errors": "conn_errors",
    "foresight_backend_resource_ratio": "resource",
    "foresight_backend_busy_workers_ratio": "busy",
}
# Signals whose service-wide value is the highest instance peak, not the sum: a ratio of one
# instance's capacity (0..1) does not add up over instances, and the riskiest instance is what matters.
RATIO_SIGNALS = frozenset({"resource", "busy"})


def counter_delta(previous: float | None, value: float) -> float:
    """Increase of a monotonic counter since the previous sample; a reset counts from 0."""
    if previous is None:
        return 0.0
    return value - previous if value >= previous else value


class WindowAcc:
    """Counts, latency sketch and saturation signals of one window of one key."""

    __slots__ = (
        "busy_max",
        "busy_n",
        "busy_sum",
        "by_class",
        "bytes_sent",
        "conn_errors",
        "late",
        "latency",
        "queue_max",
        "requests",
        "resource_max",
        "sessions_max",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = [0, 0, 0, 0]  # 2xx 3xx 4xx 5xx
        self.bytes_sent = 0
        self.latency = new_sketch()
        self.sessions_max = 0.0
        self.queue_max = 0.0
        self.conn_errors = 0.0
        self.resource_max = 0.0  # peak of the backend's resource ratio (0 healthy .. 1 about to crash)
        self.busy_max = 0.0  # peak of the backend's busy-workers ratio
        self.busy_sum = 0.0  # sum and count of its samples: the mean, an unbiased utilisation (the peak reads high)
        self.busy_n = 0
        self.late = 0  # late events of this key reported with this window (service-wide merge only)

    def add(self, status: int, latency_ms: float, bytes_sent: int) -> None:
        self.requests += 1
        cls = status // 100 - 2
        if 0 <= cls < 4:
            self.by_class[cls] += 1
        self.bytes_sent += bytes_sent
        self.latency.add(latency_ms if latency_ms > 0 else 0.0)

    def add_many(self, status: np.ndarray, latency_ms: np.ndarray, bytes_sent: np.ndarray) -> None:
        """`add` for each event of the arrays (int64, finite float64, int64), in their order: the same
        state, at a fraction of the cost per event. The caller keeps the byte sum within int64."""
        self.requests += len(status)
        cls = status // 100 - 2
        counts = np.bincount(cls[(cls >= 0) & (cls < 4)], minlength=4).tolist()
        self.by_class = [a + b for a, b in zip(self.by_class, counts, strict=True)]
        self.bytes_sent += int(bytes_sent.sum())
        add_many(self.latency, latency_ms)

    def add_signal(self, signal: str, value: float) -> None:
        """A gauge sample (keep the window's peak) or a counter increase (sum)."""
        if signal == "sessions":
            self.sessions_max = max(self.sessions_max, value)
        elif signal == "queue":
            self.queue_max = max(self.queue_max, value)
        elif signal == "resource":
            self.resource_max = max(self.resource_max, value)
        elif signal == "busy":
            self.busy_max = max(self.busy_max, value)
            self.busy_sum += value
            self.busy_n += 1
        else:
            self.conn_errors += value

    def extend(self, other: WindowAcc) -> None:
        """Fold in another window of the same key (an instance's shorter windows within a service-wide
        one): counts add up, each peak keeps the highest (the instance's peak over the longer span), the
        busy samples pool (the instance's mean over the longer span)."""
        self.requests += other.requests
        self.by_class = [a + b for a, b in zip(self.by_class, other.by_class, strict=True)]
        self.bytes_sent += other.bytes_sent
        self.latency.merge(other.latency)
        self.sessions_max = max(self.sessions_max, other.sessions_max)
        self.queue_max = max(self.queue_max, other.queue_max)
        self.conn_errors += other.conn_errors
        self.resource_max = max(self.resource_max, other.resource_max)
        self.busy_max = max(self.busy_max, other.busy_max)
        self.busy_sum += other.busy_sum
        self.busy_n += other.busy_n
        self.late += other.late

    def merge(self, other: WindowAcc) -> None:
        """Fold another instance's window in (the service-wide window): peaks of sessions and queue add
        up (requests in flight at once over the service), the ratios keep the highest (`RATIO_SIGNALS`): the
        peaks' highest, and the busy samples of the instance with the highest mean."""
        self.requests += other.requests
        self.by_class = [a + b for a, b in zip(self.by_class, other.by_class, strict=True)]
        self.bytes_sent += other.bytes_sent
        self.latency.merge(other.latency)
        self.sessions_max += other.sessions_max
        self.queue_max += other.queue_max
        self.conn_errors += other.conn_errors
        self.resource_max = max(self.resource_max, other.resource_max)
        self.busy_max = max(self.busy_max, other.busy_max)
        if other.busy_n and (not self.busy_n or other.busy_mean > self.busy_mean):
            self.busy_sum, self.busy_n = other.busy_sum, other.busy_n
        self.late += other.late

    @property
    def busy_mean(self) -> float:
        """Mean of the busy samples (0.0 when none)."""
        return self.busy_sum / self.busy_n if self.busy_n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.requests, "c": self.by_class, "b": self.bytes_sent, "l": sketch_to_dict(self.latency),
                "s": self.sessions_max, "q": self.queue_max, "e": self.conn_errors, "late": self.late,
                "rs": self.resource_max, "bz": self.busy_max, "bzs": self.busy_sum, "bzn": self.busy_n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowAcc:
        acc = cls()
        acc.requests, acc.by_class, acc.bytes_sent = d["r"], list(d["c"]), d["b"]
        acc.latency = sketch_from_dict(d["l"])
        acc.sessions_max, acc.queue_max, acc.conn_errors, acc.late = d["s"], d["q"], d["e"], d.get("late", 0)
        acc.resource_max, acc.busy_max = d.get("rs", 0.0), d.get("bz", 0.0)  # absent in states written before them
        acc.busy_sum, acc.busy_n = d.get("bzs", 0.0), d.get("bzn", 0)  # likewise (such a window reads a mean of 0)
        return acc

    def to_window(self, service: str, instance: str, start: int, window_ms: int, late: int,
                  emitted_at: int) -> FeatureWindow:
        q = self.latency
        return FeatureWindow(
            window_start=start, window_end=start + window_ms, service=service, instance=instance,
            requests=self.requests, rate=self.requests / (window_ms / 1000),
            status_2xx=self.by_class[0], status_3xx=self.by_class[1], status_4xx=self.by_class[2],
            status_5xx=self.by_class[3],
            latency_p50_ms=quantile(q, 0.5), latency_p90_ms=quantile(q, 0.9), latency_p99_ms=quantile(q, 0.99),
            bytes_sent=self.bytes_sent, sessions_max=self.sessions_max, queue_max=self.queue_max,
            conn_errors=self.conn_errors, resource_max=self.resource_max, busy_max=self.busy_max,
            busy_mean=self.busy_mean, late_events=late, emitted_at=emitted_at,
        )


class WindowAggregator:
    """Every key's windows in one process, closed by one watermark (the offline/single-process form).

    Instance windows last `instance_window_s` (default `window_s`, which it must divide), service-wide
    `*` windows `window_s`: a `*` window counts the events of its instances' windows within it, and its
    session/queue peaks are the sum over instances of each one's peak in it."""

    def __init__(self, window_s: int, allowed_lateness_s: float, instance_window_s: int | None = None) -> None:
        self.window_ms = window_s * 1000
        self.instance_window_ms = (instance_window_s or window_s) * 1000
        if self.window_ms % self.instance_window_ms:
            raise ValueError(f"instance_window_s {instance_window_s} does not divide window_s {window_s}")
        self.lateness_ms = int(allowed_lateness_s * 1000)
        self._open: dict[tuple[str, str, int], WindowAcc] = {}
        self._closed_before: dict[tuple[str, str], int] = {}  # per key: windows starting before this are closed
        self._late: dict[tuple[str, str], int] = {}
        self._counters: dict[tuple[str, str], float] = {}
        # (service, `*` window start) -> instance -> its [sessions, queue] peak within that window and the
        # [sum, count] of its busy samples there
        self._peaks: dict[tuple[str, int], dict[str, list[float]]] = {}
        self.max_event_ts = 0
        self.late_total = 0

    def _size(self, instance: str) -> int:
        return self.window_ms if instance == SERVICE_WIDE else self.instance_window_ms

    def _acc(self, key: tuple[str, str], ts: int) -> WindowAcc | None:
        """The open window of `key` holding `ts`, or None (counted late) when it has closed."""
        start = ts - ts % self._size(key[1])
        if start < self._closed_before.get(key, 0):
            self._late[key] = self._late.get(key, 0) + 1
            return None
        acc = self._open.get((*key, start))
        if acc is None:
            acc = self._open[(*key, start)] = WindowAcc()
        return acc

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Add decoded access events; returns how many were late."""
        late = 0
        for ev in events:
            ts = int(ev["ts"])
            service, instance = ev["service"], ev["instance"]
            status, latency, size = int(ev["status"]), float(ev["latency_ms"]), int(ev["bytes_sent"])
            acc = self._acc((service, instance), ts)
            if acc is None:  # as in the worker, where `*` windows are merged from instance windows: not in `*`
                late += 1
                self._late[(service, SERVICE_WIDE)] = self._late.get((service, SERVICE_WIDE), 0) + 1
            else:
                acc.add(status, latency, size)
                service_acc = self._acc((service, SERVICE_WIDE), ts)
                if service_acc is not None:
                    service_acc.add(status, latency, size)
            self.max_event_ts = max(self.max_event_ts, ts)
        self.late_total += late
        return late

    def add_samples(self, samples: Iterable[Mapping[str, Any]]) -> int:
        """Add decoded metric samples (saturation signals only, the rest ignored); returns how many were late."""
        late = 0
        for sample in samples:
            signal = SATURATION_METRICS.get(sample["name"])
            if signal is None:
                continue
            ts, value = int(sample["ts"]), float(sample["value"])
            key = (sample["service"], sample["instance"])
            if signal == "conn_errors":
                value, self._counters[key] = counter_delta(self._counters.get(key), value), value
            acc = self._acc(key, ts)
            if acc is None:
                late += 1
                continue
            acc.add_signal(signal, value)
            service_acc = self._acc((key[0], SERVICE_WIDE), ts)
            if service_acc is not None:  # as in a merge: summed peaks are set at close, ratios keep the highest
                service_acc.add_signal(signal, value if signal == "conn_errors" or signal in RATIO_SIGNALS else 0.0)
                if signal in ("sessions", "queue", "busy"):
                    peaks = self._peaks.setdefault((key[0], ts - ts % self.window_ms), {}).setdefault(
                        key[1], [0.0, 0.0, 0.0, 0.0])
                    if signal == "busy":
                        peaks[2] += value
                        peaks[3] += 1
                    else:
                        i = 0 if signal == "sessions" else 1
                        peaks[i] = max(peaks[i], value)
            self.max_event_ts = max(self.max_event_ts, ts)
        return late

    def watermark(self, now_ms: int | None = None) -> int:
        """Event-time watermark; with `now_ms` (idle stream) the wall clock may advance it."""
        mark = self.max_event_ts - self.lateness_ms
        if now_ms is not None:
            mark = max(mark, now_ms - self.lateness_ms)
        return mark

    def close(self, watermark: int, emitted_at: int) -> list[FeatureWindow]:
        """Remove and return every window whose end is at or before `watermark`."""
        done = sorted(k for k in self._open if k[2] + self._size(k[1]) <= watermark)
        out = []
        for service, instance, start in done:
            acc = self._open.pop((service, instance, start))
            key = (service, instance)
            size = self._size(instance)
            self._closed_before[key] = max(self._closed_before.get(key, 0), start + size)
            if instance == SERVICE_WIDE:  # peaks: sum of the instances' peaks within it; busy: the highest mean
                peaks = self._peaks.pop((service, start), {}).values()
                acc.sessions_max = sum(p[0] for p in peaks)
                acc.queue_max = sum(p[1] for p in peaks)
                acc.busy_sum, acc.busy_n = 0.0, 0
                for p in peaks:
                    if p[3] and (not acc.busy_n or p[2] / p[3] > acc.busy_mean):
                        acc.busy_sum, acc.busy_n = p[2], int(p[3])
            out.append(acc.to_window(service, instance, start, size, self._late.pop(key, 0), emitted_at))
        return out

    @property
    def open_windows(self) -> int:
        return len(self._open)
