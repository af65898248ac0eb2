import random

import numpy as np
import pytest

from streams.windows import SERVICE_WIDE, SKETCH_RELATIVE_ACCURACY, WindowAggregator


def ev(ts: int, instance: str = "s1", status: int = 200, latency: float = 10.0, size: int = 100) -> dict:
    return {"ts": ts, "service": "web", "instance": instance, "status": status, "latency_ms": latency,
            "bytes_sent": size}


def test_counts_per_instance_and_service_wide() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    agg.add_events([ev(1_000, "s1", 200), ev(2_000, "s1", 503), ev(9_999, "s2", 404), ev(10_000, "s2", 301)])
    closed = {(w.instance, w.window_start): w for w in agg.close(agg.watermark(), emitted_at=1)}
    assert set(closed) == {("s1", 0), ("s2", 0), (SERVICE_WIDE, 0)}  # [10 000, 20 000) still open
    s1, s2, every = closed[("s1", 0)], closed[("s2", 0)], closed[(SERVICE_WIDE, 0)]
    assert (s1.requests, s1.status_2xx, s1.status_5xx) == (2, 1, 1)
    assert (s2.requests, s2.status_4xx) == (1, 1)
    assert every.requests == 3 and every.bytes_sent == 300
    assert every.rate == pytest.approx(0.3)
    assert agg.open_windows == 2


def test_window_waits_for_allowed_lateness() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=2)
    agg.add_events([ev(5_000), ev(11_000)])
    assert agg.close(agg.watermark(), emitted_at=1) == []  # watermark 9 000 < end 10 000
    agg.add_events([ev(12_000)])
    assert [w.window_start for w in agg.close(agg.watermark(), emitted_at=1) if w.instance == "s1"] == [0]


def test_late_events_are_counted_not_dropped_silently() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    agg.add_events([ev(1_000), ev(25_000)])
    agg.close(agg.watermark(), emitted_at=1)
    late = agg.add_events([ev(3_000), ev(4_000)])
    assert late == 2 and agg.late_total == 2
    agg.add_events([ev(40_000)])
    nxt = [w for w in agg.close(agg.watermark(), emitted_at=2) if w.instance == "s1"]
    assert [w.window_start for w in nxt] == [20_000]
    assert nxt[0].late_events == 2 and nxt[0].requests == 1  # late ones reported, not counted as requests


def test_idle_wall_clock_closes_windows() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=1)
    agg.add_events([ev(1_000)])
    assert agg.close(agg.watermark(), emitted_at=1) == []
    assert len(agg.close(agg.watermark(now_ms=11_500), emitted_at=1)) == 2


def test_quantiles_within_sketch_error() -> None:
    rng = random.Random(7)
    latencies = [rng.lognormvariate(3, 1) for _ in range(5_000)]
    agg = WindowAggregator(window_s=60, allowed_lateness_s=0)
    agg.add_events([ev(i, latency=lat) for i, lat in enumerate(latencies)])
    (w, _) = agg.close(10**9, emitted_at=1)
    for q, got in [(0.5, w.latency_p50_ms), (0.9, w.latency_p90_ms), (0.99, w.latency_p99_ms)]:
        exact = float(np.quantile(latencies, q, method="lower"))
        assert abs(got - exact) <= 2 * SKETCH_RELATIVE_ACCURACY * exact + 1e-9, (q, got, exact)


def test_bad_event_raises_for_the_caller_to_dead_letter() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    with pytest.raises(KeyError):
        agg.add_events([{"ts": 1, "service": "x"}])


def test_saturation_samples_per_instance_and_service() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    agg.add_events([ev(1_000, "s1"), ev(1_000, "s2")])
    samples = [{"ts": 2_000, "service": "web", "instance": i, "name": n, "value": v} for i, n, v in [
        ("s1", "haproxy_server_current_sessions", 4), ("s1", "haproxy_server_current_sessions", 9),
        ("s2", "haproxy_server_current_sessions", 5), ("s2", "haproxy_server_current_queue", 2),
        ("s1", "haproxy_server_connection_errors_total", 10), ("s1", "haproxy_server_connection_errors_total", 12),
        ("s1", "haproxy_frontend_bytes_in_total", 999)]]
    assert agg.add_samples(samples) == 0
    agg.add_events([ev(25_000)])
    closed = {w.instance: w for w in agg.close(agg.watermark(), emitted_at=1) if w.window_start == 0}
    assert (closed["s1"].sessions_max, closed["s1"].conn_errors, closed["s2"].queue_max) == (9.0, 2.0, 2.0)
    assert (closed[SERVICE_WIDE].sessions_max, closed[SERVICE_WIDE].queue_max) == (14.0, 2.0)
    assert closed[SERVICE_WIDE].conn_errors == 2.0
    assert agg.add_samples([{"ts": 3_000, "service": "web", "instance": "s1", "name":
                             "haproxy_server_current_queue", "value": 1}]) == 1  # window closed: late


def test_backend_gauges_keep_peaks_and_the_service_keeps_the_highest_instance_peak() -> None:
    """Resource and busy ratios: each instance's peak; for `*` the highest of them (a ratio of one
    instance's capacity does not add up), while HAProxy's session peaks still add up."""
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    agg.add_events([ev(1_000, "s1"), ev(1_000, "s2")])
    samples = [{"ts": 2_000, "service": "web", "instance": i, "name": n, "value": v} for i, n, v in [
        ("s1", "foresight_backend_resource_ratio", 0.2), ("s1", "foresight_backend_resource_ratio", 0.7),
        ("s2", "foresight_backend_resource_ratio", 0.4), ("s2", "foresight_backend_busy_workers_ratio", 0.5),
        ("s1", "foresight_backend_busy_workers_ratio", 0.25), ("s1", "foresight_backend_in_flight", 9)]]
    assert agg.add_samples(samples) == 0
    agg.add_events([ev(25_000)])
    closed = {w.instance: w for w in agg.close(agg.watermark(), emitted_at=1) if w.window_start == 0}
    assert [(closed[k].resource_max, closed[k].busy_max) for k in ("s1", "s2", SERVICE_WIDE)] == [
        (0.7, 0.25), (0.4, 0.5), (0.7, 0.5)]


def test_busy_mean_is_the_mean_of_the_samples_and_the_service_keeps_the_highest_instance_mean() -> None:
    """The busy gauge's mean over a window's samples beside its peak (the capacity estimate reads the mean:
    the peak overstates utilisation); `*` keeps the highest instance mean, not the mean of all samples."""
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0)
    agg.add_events([ev(1_000, "s1"), ev(1_000, "s2"), ev(1_000, "s3")])
    samples = [{"ts": ts, "service": "web", "instance": i, "name": "foresight_backend_busy_workers_ratio",
                "value": v} for ts, i, v in [(1_000, "s1", 0.25), (3_000, "s1", 1.0), (5_000, "s1", 0.25),
                                             (7_000, "s1", 0.5), (2_000, "s2", 0.75), (4_000, "s2", 0.5)]]
    assert agg.add_samples(samples) == 0
    agg.add_events([ev(25_000)])
    closed = {w.instance: w for w in agg.close(agg.watermark(), emitted_at=1) if w.window_start == 0}
    assert [(closed[k].busy_max, closed[k].busy_mean) for k in ("s1", "s2", "s3", SERVICE_WIDE)] == [
        (1.0, 0.5), (0.75, 0.625), (0.0, 0.0), (1.0, 0.625)]  # s3: no sample, 0


def test_short_instance_windows_close_at_their_boundaries_and_the_service_window_at_its_own() -> None:
    agg = WindowAggregator(window_s=10, allowed_lateness_s=0, instance_window_s=2)
    agg.add_events([ev(1_999, "s1"), ev(2_000, "s1"), ev(3_500, "s2")])
    agg.add_events([ev(4_000, "s2")])  # watermark 4 000: [0, 2 000) and [2 000, 4 000) may close
    first = {(w.instance, w.window_start, w.window_end): w.requests for w in agg.close(agg.watermark(), 1)}
    assert first == {("s1", 0, 2_000): 1, ("s1", 2_000, 4_000): 1, ("s2", 2_000, 4_000): 1}
    assert agg.add_events([ev(3_999, "s2")]) == 1  # its instance window closed: late, not in `*` either
    agg.add_events([ev(9_999, "s1"), ev(10_000, "s1")])
    closed = {(w.instance, w.window_start, w.window_end): w for w in agg.close(agg.watermark(), 1)}
    assert {k: w.requests for k, w in closed.items()} == {
        ("s2", 4_000, 6_000): 1, ("s1", 8_000, 10_000): 1, (SERVICE_WIDE, 0, 10_000): 5}
    assert closed[("s1", 8_000, 10_000)].rate == pytest.approx(0.5)  # per second of its own 2 s
    assert (closed[(SERVICE_WIDE, 0, 10_000)].rate, closed[(SERVICE_WIDE, 0, 10_000)].late_events) == (0.5, 1)
    with pytest.raises(ValueError, match="does not divide"):
        WindowAggregator(window_s=10, allowed_lateness_s=0, instance_window_s=3)
