"""The offline reference windows and the comparison the reference tests rely on."""

from __future__ import annotations

import random
from typing import Any

import pytest
from ddsketch import DDSketch

from streams.reference import RefWindow, WindowRow, compare_windows, quantile_bounds, reference_windows


def ev(ts: int, instance: str, status: int = 200, latency: float = 10.0, size: int = 100) -> dict[str, Any]:
    return {"ts": ts, "service": "svc", "instance": instance, "status": status, "latency_ms": latency,
            "bytes_sent": size}


def test_windows_per_instance_and_service_with_exact_counts() -> None:
    events = [ev(1_000, "a", 200, 5.0, 10), ev(9_999, "a", 404, 7.0, 20), ev(10_000, "a", 503, 1.0, 0),
              ev(3_000, "b", 302, 2.0, 5), ev(4_000, "b", 101, 3.0, 1)]
    ref = reference_windows(events, window_s=10)
    assert set(ref) == {("svc", "a", 0), ("svc", "a", 10), ("svc", "b", 0), ("svc", "*", 0), ("svc", "*", 10)}
    a0 = ref[("svc", "a", 0)]
    assert (a0.requests, a0.status_2xx, a0.status_4xx, a0.bytes_sent, a0.latencies) == (2, 1, 1, 30, [5.0, 7.0])
    b0 = ref[("svc", "b", 0)]  # a 1xx is a request of no class
    assert (b0.requests, b0.status_3xx, b0.status_2xx + b0.status_4xx + b0.status_5xx) == (2, 1, 0)
    all0 = ref[("svc", "*", 0)]
    assert (all0.requests, all0.bytes_sent, all0.latencies) == (4, 36, [2.0, 3.0, 5.0, 7.0])
    assert ref[("svc", "*", 10)].status_5xx == 1


@pytest.mark.parametrize("n", [1, 2, 7, 100, 2501])
def test_quantile_bounds_hold_ddsketch_to_its_accuracy(n: int) -> None:
    rng = random.Random(n)
    values = sorted(rng.lognormvariate(3, 1.2) for _ in range(n))
    sketch = DDSketch(0.01)
    for v in values:
        sketch.add(v)
    for q in (0.5, 0.9, 0.99):
        lo, hi = quantile_bounds(values, q)
        got = sketch.get_quantile_value(q)
        assert got is not None and lo * 0.99 <= got <= hi * 1.01


def row(key: tuple[str, str, int], w: RefWindow, **changes: Any) -> WindowRow:
    qs = {name: quantile_bounds(w.latencies, q)[0] for name, q in
          (("latency_p50_ms", 0.5), ("latency_p90_ms", 0.9), ("latency_p99_ms", 0.99))}
    fields = dict(service=key[0], instance=key[1], window_start=key[2], window_end=key[2] + 10, requests=w.requests,
                  rate=w.requests / 10, status_2xx=w.status_2xx, status_3xx=w.status_3xx, status_4xx=w.status_4xx,
                  status_5xx=w.status_5xx, bytes_sent=w.bytes_sent, late_events=0, **qs)
    return WindowRow(**{**fields, **changes})


def test_compare_accepts_equal_rows_and_names_every_difference() -> None:
    ref = reference_windows([ev(1_000 + i, "a", latency=float(i + 1)) for i in range(50)] + [ev(15_000, "b")], 10)
    good = [row(k, w) for k, w in ref.items()]
    assert compare_windows(ref, good, 10, 0.01) == []

    k0 = ("svc", "a", 0)
    off = [row(k, w, requests=w.requests + 1) if k == k0 else row(k, w) for k, w in ref.items()]
    assert any("requests 51 != reference 50" in p for p in compare_windows(ref, off, 10, 0.01))
    p99 = ref[k0].latencies[48]
    far = [row(k, w, latency_p99_ms=p99 * 1.03) if k == k0 else row(k, w) for k, w in ref.items()]
    assert any("latency_p99_ms" in p for p in compare_windows(ref, far, 10, 0.01))
    near = [row(k, w, latency_p99_ms=p99 * 1.009) if k == k0 else row(k, w) for k, w in ref.items()]
    assert compare_windows(ref, near, 10, 0.01) == []

    missing = good[1:]
    assert any("missing" in p for p in compare_windows(ref, missing, 10, 0.01))
    extra = [*good, row(("svc", "c", 20), ref[k0])]
    assert any("not in the reference" in p for p in compare_windows(ref, extra, 10, 0.01))
    twice = [*good, good[0]]
    assert any("twice" in p for p in compare_windows(ref, twice, 10, 0.01))
    longer = [row(k, w, window_end=k[2] + 60) if k == k0 else row(k, w) for k, w in ref.items()]
    assert any("window of 60 s" in p for p in compare_windows(ref, longer, 10, 0.01))


def test_an_id_is_counted_once_however_often_it_is_delivered() -> None:
    first = {**ev(1_000, "a", latency=3.0), "id": "x1"}
    events = [first, {**ev(2_000, "a"), "id": "x2"}, dict(first), {**first, "ts": 12_000}]
    ref = reference_windows(events, window_s=10)
    assert set(ref) == {("svc", "a", 0), ("svc", "*", 0)}
    assert (ref[("svc", "a", 0)].requests, ref[("svc", "a", 0)].latencies) == (2, [3.0, 10.0])


def test_short_instance_windows_in_the_reference_and_the_comparison() -> None:
    events = [ev(1_000, "a"), ev(2_500, "a"), ev(9_000, "b")]
    ref = reference_windows(events, window_s=10, instance_window_s=2)
    assert {k: w.requests for k, w in ref.items()} == {("svc", "a", 0): 1, ("svc", "a", 2): 1, ("svc", "b", 8): 1,
                                                      ("svc", "*", 0): 3}

    def row(instance: str, start: int, end: int, n: int) -> WindowRow:
        return WindowRow(service="svc", instance=instance, window_start=start, window_end=end, requests=n,
                         rate=n / (end - start), status_2xx=n, status_3xx=0, status_4xx=0, status_5xx=0,
                         latency_p50_ms=10.0, latency_p90_ms=10.0, latency_p99_ms=10.0, bytes_sent=100 * n,
                         late_events=0)

    good = [row("a", 0, 2, 1), row("a", 2, 4, 1), row("b", 8, 10, 1), row("*", 0, 10, 3)]
    assert compare_windows(ref, good, 10, 0.01, instance_window_s=2) == []
    assert any("window of 2 s, expected 10" in p for p in compare_windows(ref, good, 10, 0.01))
