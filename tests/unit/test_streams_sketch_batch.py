"""`add_many` builds the sketch that adding the values one by one builds."""

from __future__ import annotations

import random

import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.sketch_batch import add_many


def one_by_one(values: list[float]) -> DDSketch:
    sk = DDSketch(0.01)
    for v in values:
        sk.add(v if v > 0 else 0.0)
    return sk


def buckets(sk: DDSketch) -> dict[int, float]:
    store = sk._store
    return {i + store.offset: c for i, c in enumerate(store.bins) if c}


def assert_same(a: DDSketch, b: DDSketch) -> None:
    assert (a.count, a._zero_count, a._min, a._max) == (b.count, b._zero_count, b._min, b._max)
    assert a.sum == pytest.approx(b.sum, rel=1e-12)
    assert buckets(a) == buckets(b)
    sa, sb = a._store, b._store  # the layout too: it is what the changelog carries
    assert (sa.offset, sa.bins, sa.min_key, sa.max_key, sa.count) == (sb.offset, sb.bins, sb.min_key, sb.max_key,
                                                                      sb.count)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert a.get_quantile_value(q) == b.get_quantile_value(q)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 1000])
def test_lognormal_latencies_in_chunks(n: int) -> None:
    rng = random.Random(n)
    values = [rng.lognormvariate(2, 1.5) for _ in range(n)] + [0.0, -3.0] * (n // 10)
    expected = one_by_one(values)
    got = DDSketch(0.01)
    for start in range(0, len(values), 97):
        add_many(got, values[start:start + 97])
    assert_same(got, expected)


@given(st.lists(st.floats(min_value=-1.0, max_value=1e7, allow_nan=False), min_size=32, max_size=300))
@settings(database=None, max_examples=200)
def test_any_values(values: list[float]) -> None:
    got = DDSketch(0.01)
    add_many(got, values)
    assert_same(got, one_by_one(values))
