"""What the stream worker keeps in its Faust tables, one value per key, serialised with orjson.

`InstanceState` (key `service/instance`) is one instance's open windows plus the highest offset
of every input partition already folded in: a record at or below that offset is a replay after a
crash and is skipped, so a state recovered from the changelog plus re-read offsets never counts
an event twice. Each open window also keeps the keys of the event ids it counted
(`streams.event_ids`), so an event that ingest delivered twice (a spool replay, an HTTP retry,
a file sent again) is counted once: they live in the changelog with the window, so a recovered
worker still knows them, and go when the window closes (a copy arriving after that is late).
Closed windows stay in `pending` until ClickHouse acknowledged them.
`ServiceWindow` (key `service|window_start`) collects the instances' closed windows of one
service-wide window by instance name and start (instance windows may be shorter, see
`streams.instance_window_s`), so a partial delivered twice replaces itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, overload

import numpy as np
import orjson

from infra.core.contracts import SERVICE_WIDE
from streams.event_ids import IdSet
from streams.schemas import FeatureWindow, WindowPartial
from streams.windows import SATURATION_METRICS, WindowAcc, counter_delta

_SAFE = 2**62  # event times and state integers within this stay exact in int64 (with a window added)


class PartitionClock:
    """Event-time watermark of one input partition: its latest access-event time minus the lateness.

    Per partition (not per worker), so how partitions are spread over workers changes nothing."""

    __slots__ = ("lateness_ms", "max_ts")

    def __init__(self, lateness_ms: int, max_ts: int = 0) -> None:
        self.max_ts = max_ts
        self.lateness_ms = lateness_ms

    @property
    def watermark(self) -> int:
        return self.max_ts - self.lateness_ms


class InstanceState:
    __slots__ = (
        "closed_before",
        "counter",
        "ids",
        "instance",
        "late",
        "max_ts",
        "offsets",
        "partition",
        "pending",
        "service",
        "windows",
    )

    def __init__(self, service: str, instance: str, partition: int) -> None:
        self.service, self.instance, self.partition = service, instance, partition
        self.windows: dict[int, WindowAcc] = {}
        self.ids: dict[int, IdSet] = {}  # window start -> keys of the event ids counted in it
        self.closed_before = 0  # windows starting before this are closed: their events are late
        self.late = 0  # late access events not yet reported (they go with the next closed window)
        self.offsets: dict[str, int] = {}  # "topic:partition" -> highest offset applied
        # window_start -> {"w": closed FeatureWindow, "p": its WindowPartial}, until ClickHouse has it
        self.pending: dict[int, dict[str, Any]] = {}
        self.counter: float | None = None  # last connection-errors counter sample
        self.max_ts = 0

    @property
    def key(self) -> bytes:
        return f"{self.service}/{self.instance}".encode()

    def applied(self, tp: str, offset: int) -> bool:
        return offset <= self.offsets.get(tp, -1)

    def _acc(self, ts: int, window_ms: int, watermark: int) -> WindowAcc | None:
        start = ts - ts % window_ms
        if start < self.closed_before or start + window_ms <= watermark:
            return None
        acc = self.windows.get(start)
        if acc is None:
            acc = self.windows[start] = WindowAcc()
        return acc

    @overload
    def add_access(self, ev: Mapping[str, Any], window_ms: int, clock: PartitionClock) -> bool: ...

    @overload
    def add_access(self, ev: Mapping[str, Any], window_ms: int, clock: PartitionClock, key: int) -> bool | None: ...

    def add_access(self, ev: Mapping[str, Any], window_ms: int, clock: PartitionClock,
                   key: int | None = None) -> bool | None:
        """Fold one access event in; False when it was late (counted, reported with the next window),
        None when its id `key` (`streams.event_ids.id_key`) was already counted in its window.

        Lateness is decided per event against the partition watermark *before* it, so the answer
        depends only on the partition's order, not on how records were batched. A duplicate moves
        the watermark as any event does (a copy has its original's time, so it never does)."""
        ts = int(ev["ts"])
        status, latency, size = int(ev["status"]), float(ev["latency_ms"]), int(ev["bytes_sent"])
        acc = self._acc(ts, window_ms, clock.watermark)
        if ts > self.max_ts:
            self.max_ts = ts
        if ts > clock.max_ts:
            clock.max_ts = ts
        if acc is None:
            self.late += 1
            return False
        if key is not None and not self._ids(ts - ts % window_ms).add(key):
            return None
        acc.add(status, latency, size)
        return True

    def add_access_columns(self, ts: np.ndarray, status: np.ndarray, latency: np.ndarray, size: np.ndarray,
                           window_ms: int, clock: PartitionClock, keys: np.ndarray | None = None
                           ) -> tuple[int, int] | None:
        """`add_access` for every event of a record at once, in numpy, from its columns (int64
        ts/status/size, float64 latency, uint64 id keys, in event order): (counted, late), the rest
        being duplicates, or None (and nothing changed) when a value is out of the range the
        arithmetic is exact in, so the caller folds the record in event by event instead.

        The per-event rules, for the whole record: each event's lateness is against the watermark
        before it (the running maximum of the times before it, seeded with the partition's), windows
        open in the order of their first on-time event, and each window gets its events in order."""
        n = len(ts)
        if n == 0:
            return None
        ts_lo, ts_hi = int(ts.min()), int(ts.max())
        if (not np.isfinite(latency).all() or max(-ts_lo, ts_hi, abs(clock.max_ts), abs(self.closed_before)) >= _SAFE
                or max(-int(size.min()), int(size.max())) * n >= _SAFE or not 0 <= clock.lateness_ms < _SAFE):
            return None
        before = np.empty(n, dtype=np.int64)  # partition max time before each event
        before[0] = clock.max_ts
        before[1:] = ts[:-1]
        np.maximum.accumulate(before, out=before)
        starts = ts - ts % window_ms
        on_time = (starts >= self.closed_before) & (starts + window_ms > before - clock.lateness_ms)
        if ts_hi > self.max_ts:
            self.max_ts = ts_hi
        if ts_hi > clock.max_ts:
            clock.max_ts = ts_hi
        on = int(np.count_nonzero(on_time))
        late = n - on
        self.late += late
        if on == 0:
            return 0, n
        if on < n:
            starts, status, latency, size = starts[on_time], status[on_time], latency[on_time], size[on_time]
            keys = None if keys is None else keys[on_time]
        first = int(starts[0])
        if (starts == first).all():
            return self._add_window_columns(first, status, latency, size, keys), late
        windows, first_at, group, sizes = np.unique(starts, return_index=True, return_inverse=True,
                                                    return_counts=True)
        order = np.argsort(group, kind="stable")  # by window, each in event order
        ends = np.cumsum(sizes)
        counted = 0
        for g in np.argsort(first_at).tolist():  # windows open in the order of their first event
            idx = order[ends[g] - sizes[g]:ends[g]]
            counted += self._add_window_columns(int(windows[g]), status[idx], latency[idx], size[idx],
                                                None if keys is None else keys[idx])
        return counted, late

    def _add_window_columns(self, start: int, status: np.ndarray, latency: np.ndarray, size: np.ndarray,
                            keys: np.ndarray | None) -> int:
        """One window's on-time events, in order, less those whose id it already counted: how many counted."""
        acc = self._window(start)
        if keys is not None:
            fresh = self._ids(start).add_new(keys)
            if not fresh.all():
                status, latency, size = status[fresh], latency[fresh], size[fresh]
                if len(status) == 0:
                    return 0
        acc.add_many(status, latency, size)
        return len(status)

    def _ids(self, start: int) -> IdSet:
        ids = self.ids.get(start)
        if ids is None:
            ids = self.ids[start] = IdSet()
        return ids

    def _window(self, start: int) -> WindowAcc:
        acc = self.windows.get(start)
        if acc is None:
            acc = self.windows[start] = WindowAcc()
        return acc

    def add_sample(self, sample: Mapping[str, Any], window_ms: int, clock: PartitionClock) -> bool | None:
        """Fold a saturation sample in (None: not a signal we keep; False: late). Samples never move
        the watermark: scrape time is wall time, and a replay of old logs must not look late."""
        signal = SATURATION_METRICS.get(sample["name"])
        if signal is None:
            return None
        value = float(sample["value"])
        if signal == "conn_errors":
            value, self.counter = counter_delta(self.counter, value), value
        acc = self._acc(int(sample["ts"]), window_ms, clock.watermark)
        if acc is None:
            return False
        acc.add_signal(signal, value)
        return True

    def close(self, watermark: int, window_ms: int, emitted_at: int) -> list[tuple[FeatureWindow, WindowPartial]]:
        """Close every window ending at or before `watermark`; each goes to `pending` (for ClickHouse)
        and comes back with its partial (for the service-wide merge)."""
        out = []
        for start in sorted(s for s in self.windows if s + window_ms <= watermark):
            acc = self.windows.pop(start)
            self.ids.pop(start, None)  # a copy arriving from now on is late, as any event of this window
            late, self.late = self.late, 0
            window = acc.to_window(self.service, self.instance, start, window_ms, late, emitted_at)
            partial = WindowPartial(service=self.service, instance=self.instance, window_start=start,
                                    late_events=late, acc=acc.to_dict())
            self.pending[start] = {"w": window.model_dump(), "p": partial.model_dump()}
            self.closed_before = max(self.closed_before, start + window_ms)
            out.append((window, partial))
        return out

    def forgettable(self, watermark: int, retain_ms: int) -> bool:
        """True when dropping this state changes no count: nothing open, unacknowledged or late to
        report, and the partition watermark `retain_ms` past its last closed window, so any event of
        it arriving again would be late with or without the state (a new state then counts it late).
        Only the connection-errors counter is lost: the next sample after that is an increase of 0."""
        return (not self.windows and not self.pending and self.late == 0 and self.closed_before > 0
                and self.closed_before + retain_ms <= watermark)

    def pending_closed(self) -> list[tuple[FeatureWindow, WindowPartial]]:
        """The closed windows not yet acknowledged, to publish again after a recovery."""
        return [(FeatureWindow.model_validate(p["w"]), WindowPartial.model_validate(p["p"]))
                for p in self.pending.values()]

    def dumps(self) -> bytes:
        return orjson.dumps({
            "sv": self.service, "in": self.instance, "p": self.partition, "cb": self.closed_before, "late": self.late,
            "o": self.offsets, "pd": list(self.pending.values()), "ctr": self.counter, "mt": self.max_ts,
            "w": [[start, acc.to_dict()] for start, acc in self.windows.items()],
            "ids": [[start, self.ids[start].dumps()] for start in sorted(self.ids)],
        })

    @classmethod
    def loads(cls, raw: bytes) -> InstanceState:
        d = orjson.loads(raw)
        st = cls(d["sv"], d["in"], d["p"])
        st.closed_before, st.late, st.offsets, st.counter, st.max_ts = d["cb"], d["late"], d["o"], d["ctr"], d["mt"]
        st.pending = {p["w"]["window_start"]: p for p in d["pd"]}
        st.windows = {start: WindowAcc.from_dict(acc) for start, acc in d["w"]}
        st.ids = {start: IdSet.loads(keys) for start, keys in d.get("ids", ())}  # absent before dedup
        return st


class ServiceWindow:
    """One service-wide window: the instances' closed windows, merged into `*` whenever they change.

    The `*` row is (re-)emitted once no instance window arrived for a grace period; an instance
    window arriving later re-emits it with a later version (ReplacingMergeTree keeps the last).
    After the retention the instance data is dropped and the window only remembers it is done."""

    __slots__ = (
        "done",
        "emitted_at",
        "emitted_version",
        "partition",
        "parts",
        "pending",
        "service",
        "updated",
        "version",
        "window_start",
    )

    def __init__(self, service: str, window_start: int, partition: int) -> None:
        self.service, self.window_start, self.partition = service, window_start, partition
        # One per instance window: its first (starting with this window) under the instance's name, as
        # before instance windows could be shorter, so a recovered state still recognises its replays;
        # each later one under `instance NUL start`, with "i" (instance) and "s" (start) in the value.
        self.parts: dict[str, dict[str, Any]] = {}  # key -> {"late": n, "acc": WindowAcc dict[, "i", "s"]}
        self.version = 0
        self.emitted_version = 0
        self.emitted_at = 0
        self.pending: dict[str, Any] | None = None  # the `*` FeatureWindow not yet in ClickHouse
        self.updated = 0.0  # wall time of the last change
        self.done = False

    @property
    def key(self) -> bytes:
        return f"{self.service}|{self.window_start}".encode()

    def add(self, partial: WindowPartial, now: float) -> bool:
        """Take an instance's closed window; False if it changes nothing (a replay) or comes too late."""
        part: dict[str, Any] = {"late": partial.late_events, "acc": partial.acc}
        key = partial.instance
        if partial.window_start != self.window_start:
            key = f"{partial.instance}\x00{partial.window_start}"
            part |= {"i": partial.instance, "s": partial.window_start}
        if self.done or self.parts.get(key) == part:
            return False
        self.parts[key] = part
        self.version += 1
        self.updated = now
        return True

    def due(self, now: float, grace_s: float, window_ms: int = 0, instance_window_ms: int = 0) -> bool:
        """Settled: no instance window arrived for `grace_s`. With instance windows shorter than the
        service-wide one, until one of its last instance windows arrived, the wait is `window_ms` longer
        (the rest are likely still open: emitting would publish a `*` row short of them)."""
        if self.done or self.version <= self.emitted_version:
            return False
        quiet = now - self.updated
        last = max((part.get("s", self.window_start) for part in self.parts.values()), default=self.window_start)
        if instance_window_ms and last + instance_window_ms < self.window_start + window_ms:
            return quiet >= grace_s + window_ms / 1000
        return quiet >= grace_s

    def emit(self, window_ms: int, now_ms: int) -> FeatureWindow:
        by_instance: dict[str, WindowAcc] = {}  # each instance's windows within this one, as one
        late = 0
        for key, part in self.parts.items():
            acc = WindowAcc.from_dict(part["acc"])
            instance = part.get("i", key)
            if instance in by_instance:
                by_instance[instance].extend(acc)
            else:
                by_instance[instance] = acc
            late += part["late"]
        merged = WindowAcc()
        for acc in by_instance.values():
            merged.merge(acc)
        self.emitted_at = max(now_ms, self.emitted_at + 1)  # a correction must replace the earlier row
        self.emitted_version = self.version
        window = merged.to_window(self.service, SERVICE_WIDE, self.window_start, window_ms, late, self.emitted_at)
        self.pending = window.model_dump()
        return window

    def retire(self, now: float, retain_s: float) -> bool:
        """Forget the instance data once settled and acknowledged; True if the state changed."""
        if self.done or self.pending is not None or self.version > self.emitted_version:
            return False
        if now - self.updated < retain_s:
            return False
        self.parts, self.done = {}, True
        return True

    def dumps(self) -> bytes:
        return orjson.dumps({
            "sv": self.service, "ws": self.window_start, "p": self.partition, "parts": self.parts,
            "v": self.version, "ev": self.emitted_version, "ea": self.emitted_at, "pd": self.pending,
            "u": self.updated, "done": self.done,
        })

    @classmethod
    def loads(cls, raw: bytes) -> ServiceWindow:
        d = orjson.loads(raw)
        st = cls(d["sv"], d["ws"], d["p"])
        st.parts, st.version, st.emitted_version, st.emitted_at = d["parts"], d["v"], d["ev"], d["ea"]
        st.pending, st.updated, st.done = d["pd"], d["u"], d["done"]
        return st


def window_id(w: Mapping[str, Any]) -> tuple[str, str, int, int]:
    """One emission of one window: what ClickHouse acknowledges."""
    return (w["service"], w["instance"], w["window_start"], w["emitted_at"])


def pending_windows(states: Iterable[InstanceState | ServiceWindow]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for st in states:
        if isinstance(st, InstanceState):
            out.extend(p["w"] for p in st.pending.values())
        elif st.pending is not None:
            out.append(st.pending)
    return out
