"""Event ids in the compact, exact form the stream worker deduplicates by: 64-bit integer keys.

Ingest's ids are XXH3-128 digests as 32 hex characters (`ingest.parsers.base.event_id`); the
key of such an id (in either case) is its first 16 hex characters (the high 64 bits) read as an unsigned
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
_HEX = frozenset("0123456789abcdefABCDEF")


def id_key(event_id: str) -> int:
    """The 64-bit key of one event id (TypeError if it is not a string)."""
    if len(event_id) == _HEX_LEN and _HEX.issuperset(event_id):
        return int(event_id[:_PREFIX], 16)
    return xxhash.xxh3_64_intdigest(event_id.encode("utf-8", "surrogatepass"))


def id_keys(event_ids: Sequence[str]) -> np.ndarray:
    """`id_key` of every id, as uint64: for a batch of hex ids (what ingest writes) one `bytes.fromhex`
    of them all, big-endian halves read at once (~15 ns an id, a tenth of the per-id call)."""
    n = len(event_ids)
    if n and set(map(len, event_ids)) == {_HEX_LEN}:
        try:
            raw = bytes.fromhex("".join(event_ids))
        except ValueError:  # not all hex: per id below
            raw = b""
        if len(raw) == n * _HEX_LEN // 2:  # fromhex skips whitespace: then the length tells
            return np.frombuffer(raw, dtype=">u8")[::2].astype(np.uint64)
    return np.fromiter(map(id_key, event_ids), dtype=np.uint64, count=n)


class IdSet:
    """The keys seen in one window, exact: one sorted uint64 array (a record's new keys go in with
    one `np.insert` at the positions the membership search found: a copy, no sort), plus a set for
    keys added one at a time (the per-event path), merged in before any vectorised use."""

    __slots__ = ("_keys", "_loose")

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self._keys = np.empty(0, dtype=np.uint64) if keys is None else keys
        self._loose: set[int] = set()

    def __len__(self) -> int:
        return len(self._keys) + len(self._loose)

    def _settle(self) -> np.ndarray:
        if self._loose:
            loose, self._loose = self._loose, set()
            self._keys = np.sort(np.concatenate((self._keys, np.fromiter(loose, dtype=np.uint64, count=len(loose)))))
        return self._keys

    def add(self, key: int) -> bool:
        """Add one key; False if it was already there."""
        if key in self._loose:
            return False
        held = self._keys
        i = int(np.searchsorted(held, key))
        if i < len(held) and int(held[i]) == key:
            return False
        self._loose.add(key)
        return True

    def add_new(self, keys: np.ndarray) -> np.ndarray:
        """Add keys (uint64, in event order): a mask of those not seen before, here or earlier in `keys`."""
        held = self._settle()
        ordered = np.sort(keys)
        at = np.searchsorted(held, ordered)
        seen = held[np.minimum(at, len(held) - 1)] == ordered if len(held) else np.zeros(len(keys), dtype=bool)
        repeated = ordered[1:] == ordered[:-1]
        if not repeated.any() and not seen.any():  # the common case: nothing to drop
            self._keys = np.insert(held, at, ordered) if len(held) else ordered
            return np.ones(len(keys), dtype=bool)
        order = np.argsort(keys, kind="stable")  # equal keys in event order: the first of them is kept
        fresh_sorted = ~seen
        fresh_sorted[1:] &= ordered[1:] != ordered[:-1]
        fresh = np.empty_like(fresh_sorted)
        fresh[order] = fresh_sorted
        self._keys = np.insert(held, at[fresh_sorted], ordered[fresh_sorted])
        return fresh

    def dumps(self) -> str:
        """The keys as base64 of little-endian uint64, sorted: 8 bytes a key (11 characters) in the changelog."""
        return base64.b64encode(self._settle().astype("<u8", copy=False).tobytes()).decode("ascii")

    @classmethod
    def loads(cls, text: str) -> IdSet:
        return cls(np.frombuffer(base64.b64decode(text), dtype="<u8").astype(np.uint64))
