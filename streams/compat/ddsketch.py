"""ddsketch's private fields: the one place that reads or writes them.

ddsketch publishes `add`, `merge`, `get_quantile_value` and read-only `count`/`sum`, but no way
to rebuild a sketch from its parts (its protobuf form needs the generated module and is slower)
nor to add many values at once. `streams.sketch` (changelog form) and `streams.sketch_batch`
(numpy batch add) need both, so they go through these accessors.
"""

from __future__ import annotations

import math
from typing import Any

from ddsketch import DDSketch
from ddsketch.mapping import KeyMapping, LogarithmicMapping
from ddsketch.store import DenseStore, Store

from infra.core.internals import require

LIBRARY = "ddsketch"


Totals = tuple[float, float, float, float, float]  # zero count, count, sum, min, max (a plain tuple: hot path)


def totals(sk: DDSketch) -> Totals:
    """A sketch's scalar fields besides its stores: (zero count, count, sum, min, max)."""
    return sk._zero_count, sk._count, sk._sum, sk._min, sk._max


def set_totals(sk: DDSketch, zero_count: float, count: float, total: float, low: float, high: float) -> None:
    sk._zero_count, sk._count, sk._sum, sk._min, sk._max = zero_count, count, total, low, high


def store(sk: DDSketch) -> Store:
    """The positive-value store (the negative one stays empty: latencies are clamped at 0)."""
    return sk._store


def mapping(sk: DDSketch) -> KeyMapping:
    return sk._mapping


def extend_range(st: DenseStore, key: int) -> None:
    """Grow a dense store's range to hold `key`, as its `add` would."""
    st._extend_range(key)


def log_key_terms(m: LogarithmicMapping) -> tuple[float, float]:
    """(multiplier, offset) with `m.key(v) == ceil(ln(v) / ln(2) * multiplier) + offset`."""
    return m._multiplier, m._offset


def check() -> None:
    """The installed ddsketch still holds a sketch in the fields above, with the same meaning."""
    sk = DDSketch(0.01)
    for value in (0.0, 1.5, 3.0):
        sk.add(value)
    for name in ("_zero_count", "_count", "_sum", "_min", "_max", "_store", "_mapping"):
        require(LIBRARY, hasattr(sk, name), f"DDSketch has no `{name}`", __name__)
    require(LIBRARY, totals(sk) == (1.0, 3.0, 4.5, 0.0, 3.0) and sk.count == 3.0 and sk.sum == 4.5,
            f"DDSketch's private totals no longer mean zero count, count, sum, min, max: {totals(sk)}", __name__)
    st: Any = store(sk)
    require(LIBRARY, type(st) is DenseStore, f"the default store is a {type(st).__qualname__}, not DenseStore",
            __name__)
    for name in ("offset", "bins", "min_key", "max_key", "count"):
        require(LIBRARY, hasattr(st, name), f"DenseStore has no `{name}`", __name__)
    require(LIBRARY, callable(getattr(st, "_extend_range", None)), "DenseStore has no `_extend_range()`", __name__)
    m = mapping(sk)
    require(LIBRARY, type(m) is LogarithmicMapping,
            f"the default mapping is a {type(m).__qualname__}, not LogarithmicMapping", __name__)
    multiplier, offset = log_key_terms(m)
    keys = [(math.ceil(math.log(v) / math.log(2) * multiplier) + offset, m.key(v)) for v in (0.3, 1.5, 47.0, 2e4)]
    require(LIBRARY, all(ours == theirs for ours, theirs in keys),
            f"LogarithmicMapping's key is no longer ceil(log2(v) * _multiplier) + _offset: {keys}", __name__)
