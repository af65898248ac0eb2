"""Event ids in the compact, exact form the stream worker deduplicates by: 64-bit integer keys.

Ingest's ids are XXH3-128 digests as 32 lowercase hex characters (`ingest.parsers.base.event_id`);
the key of such an id is its first 16 hex characters (the high 64 bits) read as an unsigned
integer, which is as uniform as the digest itself. Any other id (a producer of its own) is keyed
by its XXH3-64 hash. Both paths of the worker (columns and event by event) use these two
functions, so an id has the same key whichever path decoded it.

Collision odds: two distinct events in one window of one instance share a key with probability
2**-64 per pair, so a window of n events loses one to a false duplicate with probability about
n**2 / 2**65: 2.7e-12 for a window of 10,000 events, 2.7e-8 for a million. Keys are compared only
within one (instance, window), never across the whole stream, which is what keeps those n small.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import xxhash

_HEX_LEN = 32
_PREFIX = 16  # hex characters of the key: 64 bits
_HEX_DIGITS = np.full(128, -1, dtype=np.int8)  # code point -> hex digit value (lowercase), -1: not one
_HEX_DIGITS[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10, dtype=np.int8)
_HEX_DIGITS[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16, dtype=np.int8)
_SHIFTS = np.arange(4 * (_PREFIX - 1), -1, -4, dtype=np.uint64)
_CANONICAL = frozenset("0123456789abcdef")


def id_key(event_id: str) -> int:
    """The 64-bit key of one event id (TypeError if it is not a string)."""
    if len(event_id) == _HEX_LEN and _CANONICAL.issuperset(event_id):
        return int(event_id[:_PREFIX], 16)
    return xxhash.xxh3_64_intdigest(event_id.encode("utf-8", "surrogatepass"))


def id_keys(event_ids: Sequence[str]) -> np.ndarray:
    """`id_key` of every id, as uint64, vectorised for the hex ids ingest writes."""
    n = len(event_ids)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    text = np.array(event_ids, dtype=np.str_)
    width = text.dtype.itemsize // 4
    if width < _HEX_LEN:
        return np.fromiter((id_key(i) for i in event_ids), dtype=np.uint64, count=n)
    codes = text.view(np.uint32).reshape(n, width)
    digits = _HEX_DIGITS[np.minimum(codes[:, :_HEX_LEN], 127)]
    canonical = (digits >= 0).all(axis=1)
    if width > _HEX_LEN:  # a shorter string is padded with NUL: exactly 32 characters only
        canonical &= codes[:, _HEX_LEN] == 0
    keys = np.bitwise_or.reduce(digits[:, :_PREFIX].astype(np.uint64) << _SHIFTS, axis=1)
    if not canonical.all():
        for i in np.flatnonzero(~canonical).tolist():
            keys[i] = id_key(event_ids[i])
    return keys


class IdSet:
    """The keys seen in one window: a sorted uint64 array, plus a set for keys added one at a time
    (merged into the array before any vectorised use, so neither path pays for the other's form)."""

    __slots__ = ("_loose", "_sorted")

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self._sorted = np.empty(0, dtype=np.uint64) if keys is None else keys
        self._loose: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._loose)

    def _settle(self) -> np.ndarray:
        if self._loose:
            more = np.fromiter(self._loose, dtype=np.uint64, count=len(self._loose))
            self._sorted = np.sort(np.concatenate((self._sorted, more)), kind="stable")
            self._loose = set()
        return self._sorted

    def add(self, key: int) -> bool:
        """Add one key; False if it was already there."""
        if key in self._loose:
            return False
        arr = self._sorted
        if len(arr):
            i = int(np.searchsorted(arr, key))
            if i < len(arr) and int(arr[i]) == key:
                return False
        self._loose.add(key)
        return True

    def add_new(self, keys: np.ndarray) -> np.ndarray:
        """Add keys (uint64, in event order): a mask of those not seen before, here or earlier in `keys`."""
        n = len(keys)
        order = np.argsort(keys, kind="stable")  # equal keys keep their event order: the first wins
        ordered = keys[order]
        fresh = np.ones(n, dtype=bool)
        if n > 1:
            fresh[order[1:]] = ordered[1:] != ordered[:-1]
        arr = self._settle()
        if len(arr):
            at = np.searchsorted(arr, ordered)
            fresh[order[at < len(arr)]] &= arr[at[at < len(arr)]] != ordered[at < len(arr)]
        new = ordered[fresh[order]]
        if len(new):
            self._sorted = new if not len(arr) else np.sort(np.concatenate((arr, new)), kind="stable")
        return fresh

    def dumps(self) -> str:
        """The keys as base64 of little-endian uint64: 8 bytes a key (11 characters) in the changelog."""
        return base64.b64encode(self._settle().astype("<u8", copy=False).tobytes()).decode("ascii")

    @classmethod
    def loads(cls, text: str) -> IdSet:
        return cls(np.frombuffer(base64.b64decode(text), dtype="<u8").astype(np.uint64))
