"""Adding a batch of latencies to a DDSketch at once, with numpy.

`DDSketch.add` costs about 0.65 us a value in Python (a log, a ceil, a store update): a sixth of
the stream worker's time per event. The same mapping applied to an array, then one store update
per distinct bucket, costs a fraction of that. The result is the sketch `add` builds value by value,
down to its serialised form: the distinct buckets go to the store in the order of their first value
(the dense store's layout depends on the order its range grew in), and the sum is accumulated
left to right as `add` does. The key uses `math.log(v, 2)`'s own formula, ln(v) / ln(2); numpy's
log may still differ from libm's in the last bit, so a value lying exactly on a bucket boundary
could in principle land one bucket over: the relative-accuracy guarantee is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

from streams.compat import ddsketch as internals

_VECTOR_FROM = 32
_LN2 = math.log(2)


def _add_dense(store: DenseStore, keys: np.ndarray, counts: np.ndarray) -> None:
    """`store.add(key, count)` for each pair in order, without a Python call per bucket.

    The range grows at the same keys in the same order as one add at a time would grow it (those
    below, or above, every key before them): the bins' layout depends on that. Growing only moves
    the counts already in range, so the counts can then land all at once; they are whole numbers,
    exact in float64 whatever the order they are summed in."""
    empty = not store.bins  # its min/max keys (0, 0) are placeholders: the first key sets the range
    bounds = np.empty(len(keys) + 1, dtype=np.int64)
    bounds[1:] = keys
    bounds[0] = keys[0] if empty else store.min_key
    grows = keys < np.minimum.accumulate(bounds)[:-1]
    bounds[0] = keys[0] if empty else store.max_key
    grows |= keys > np.maximum.accumulate(bounds)[:-1]
    grows[0] |= empty
    for key in keys[grows].tolist():
        internals.extend_range(store, key)
    bins = np.asarray(store.bins, dtype=np.float64)
    bins[keys - store.offset] += counts
    store.bins = bins.tolist()
    store.count += float(counts.sum())


def add_many(sketch: DDSketch, values: Sequence[float] | np.ndarray) -> None:
    """Add `values` (each with weight 1); one not above 0 counts as 0, as in `WindowAcc.add`.

    Values must be finite (infinity makes `DDSketch.add` raise; NaN would poison the sum here)."""
    n = len(values)
    if n == 0:
        return
    mapping = internals.mapping(sketch)
    # numpy's fixed cost (~10 us a call) beats the per-value loop from a few dozen values on; the
    # vector form below is the logarithmic mapping's formula.
    if n < _VECTOR_FROM or type(mapping) is not LogarithmicMapping:
        for v in values.tolist() if isinstance(values, np.ndarray) else values:  # Python floats, not numpy's
            sketch.add(v if v > 0 else 0.0)
        return
    raw = np.asarray(values, dtype=np.float64)
    a = np.where(raw > 0, raw, 0.0)  # exactly `v if v > 0 else 0.0`: -0.0 becomes 0.0
    positive = a[a > mapping.min_possible]
    if positive.size:
        multiplier, offset = internals.log_key_terms(mapping)
        keys = np.ceil(np.log(positive) / _LN2 * multiplier) + offset
        unique, first, counts = np.unique(keys.astype(np.int64), return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        store = internals.store(sketch)
        if type(store) is DenseStore:
            _add_dense(store, unique[order], counts[order])
        else:
            for key, count in zip(unique[order].tolist(), counts[order].tolist(), strict=True):
                store.add(key, float(count))
    zeros, counted, total, low_before, high_before = internals.totals(sketch)
    sums = np.empty(n + 1)
    sums[0] = total
    sums[1:] = a
    low, high = float(a.min()), float(a.max())
    internals.set_totals(
        sketch,
        zeros + float(n - positive.size),
        counted + float(n),
        float(np.add.accumulate(sums)[-1]),  # sequential, not numpy's pairwise sum
        low if low < low_before else low_before,
        high if high > high_before else high_before,
    )
