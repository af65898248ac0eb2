"""What every access-log parser shares: its result type, its call shape, ids and rejections.

A parser turns one raw log line into an `AccessEvent` or a typed `Rejection` and never raises,
so one bad line cannot stop a source; later formats plug in by matching `LineParser`.
"""

from __future__ import annotations

import time
from operator import attrgetter
from typing import Protocol

import xxhash

from ingest.schemas import AccessEvent, Rejection, truncate_raw

ParseResult = AccessEvent | Rejection


class LineParser(Protocol):
    source: str

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event_id(message: bytes) -> str:
    """Same message bytes, same id: a re-read or re-sent line is dropped downstream as a duplicate.

    128-bit XXH3 (32 hex chars): collisions are negligible at any log volume, and it costs a
    quarter of blake2b's time, which showed as a tenth of a parse. A repeat of the line within one
    delivery unit gets `repeat_id` instead (see `Occurrences`).
    """
    return xxhash.xxh3_128_hexdigest(message)


def repeat_id(first_id: str, k: int) -> str:
    """Id of the k-th repeat (k >= 1) of the line whose first occurrence has id `first_id`.

    Derived from the id rather than the line, so it works for every parser (each hashes its own
    bytes: without surrounding whitespace, without a syslog header). The line feed never occurs in
    a line, so `id\nk` is never the hashed bytes of one.
    """
    return xxhash.xxh3_128_hexdigest(b"%s\n%d" % (first_id.encode(), k))


REMEMBERED_IDS = 1 << 14  # ids per generation of `Occurrences`: two of them, about 4 MB at most
_id_of = attrgetter("id")


class Occurrences:
    """Numbers byte-identical lines within one delivery unit, so each keeps its own id.

    Two requests can log the same line (same client, second, request, status and size: a browser
    retry, a polling client); by content hash alone they would share an id, and the downstream dedup
    (stream worker, ReplacingMergeTree) would keep one. Applied to a unit's parse results in order,
    the first occurrence keeps `event_id` (so ids of earlier data do not change) and the k-th repeat
    gets `repeat_id(id, k)`. Counting starts afresh with each unit, so a unit sent again from its
    start (the same file, the same HTTP body) gets the same ids and is still dropped as a duplicate.
    Limits: a unit re-sent from a later point numbers its repeats lower (a repeat whose twin was
    not re-sent takes the twin's id: dropped, so lost only if its first sending had failed too);
    twins in two units share an id (merged, as before this numbering); and only the last
    `remember` to 2 x `remember` distinct ids are kept, so twins further apart are merged too (real
    twins share their second, so are near). Lines are identical when their ids are. Not
    thread-safe: one per unit.

    `number` takes a batch of events, at C speed when none repeats; a call takes one event. Either
    costs about a sixth of a CLF parse, mostly for keeping the ids (fresh allocations).
    """

    __slots__ = ("_older", "_recent", "_remember")

    def __init__(self, remember: int = REMEMBERED_IDS) -> None:
        self._remember = remember
        self._recent: dict[str, int] = {}  # first id -> repeats seen so far
        self._older: dict[str, int] = {}  # the generation before: only read

    def __call__(self, event: AccessEvent) -> AccessEvent:
        """`event`, its id numbered (in place) if it repeats an earlier event of this unit."""
        eid = event.id
        recent = self._recent
        k = recent.get(eid)
        if k is None:
            k = self._older.get(eid)
            if k is None:
                if len(recent) >= self._remember:
                    self._older, self._recent = recent, {}
                    recent = self._recent
                recent[eid] = 0
                return event
        recent[eid] = k = k + 1
        event.id = repeat_id(eid, k)
        return event

    def number(self, events: list[AccessEvent]) -> list[AccessEvent]:
        """`events`, numbered in place as by a call for each in order."""
        fresh = dict.fromkeys(map(_id_of, events), 0)
        recent = self._recent
        if (len(fresh) == len(events) and fresh.keys().isdisjoint(recent.keys())
                and fresh.keys().isdisjoint(self._older.keys())):
            if len(recent) >= self._remember:
                self._older, self._recent = recent, fresh
            else:
                recent.update(fresh)
            return events
        for event in events:
            self(event)
        return events

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """The count so far, for `restore` when the results numbered after it are handed over again."""
        return self._recent.copy(), self._older  # the older generation is never written

    def restore(self, snapshot: tuple[dict[str, int], dict[str, int]]) -> None:
        self._recent, self._older = snapshot[0].copy(), snapshot[1]


def reject(source: str, reason: str, detail: str, raw: bytes | str, received_ms: int | None) -> Rejection:
    return Rejection(
        source=source,
        reason=reason,
        detail=detail,
        raw=truncate_raw(raw),
        ts_received=now_ms() if received_ms is None else received_ms,
    )
