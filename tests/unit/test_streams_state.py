"""The table states of the stream worker: replay safety, pending windows, service-wide merge."""

from __future__ import annotations

import random

import pytest

from streams.schemas import WindowPartial
from streams.sketch import new_sketch, quantile, sketch_from_dict, sketch_to_dict
from streams.state import InstanceState, PartitionClock, ServiceWindow, pending_windows
from streams.windows import SERVICE_WIDE, SKETCH_RELATIVE_ACCURACY, WindowAcc, WindowAggregator, counter_delta

W = 10_000


def ev(ts: int, status: int = 200, latency: float = 10.0, size: int = 100, instance: str = "s1") -> dict:
    return {"ts": ts, "service": "web", "instance": instance, "status": status, "latency_ms": latency,
            "bytes_sent": size}


def sample(ts: int, name: str, value: float, instance: str = "s1") -> dict:
    return {"ts": ts, "service": "web", "instance": instance, "name": name, "value": value}


def test_sketch_round_trip_keeps_quantiles_and_merges() -> None:
    rng = random.Random(3)
    sk = new_sketch()
    for _ in range(2_000):
        sk.add(rng.lognormvariate(3, 1))
    back = sketch_from_dict(sketch_to_dict(sk))
    assert [quantile(back, q) for q in (0.5, 0.9, 0.99)] == [quantile(sk, q) for q in (0.5, 0.9, 0.99)]
    back.merge(sk)
    assert back.count == 2 * sk.count and quantile(back, 0.5) == quantile(sk, 0.5)
    assert quantile(sketch_from_dict(sketch_to_dict(new_sketch())), 0.5) == 0.0


def test_instance_state_survives_serialisation() -> None:
    clock = PartitionClock(lateness_ms=0)
    st = InstanceState("web", "s1", partition=2)
    for i in range(50):
        st.add_access(ev(1_000 + i, status=200 + 100 * (i % 4), latency=float(i)), W, clock)
    st.add_sample(sample(2_000, "haproxy_server_current_sessions", 7), W, clock)
    st.offsets["fs.access:2"] = 41
    back = InstanceState.loads(st.dumps())
    assert back.dumps() == st.dumps()
    (w, _), = back.close(20_000, W, emitted_at=5)
    assert (w.requests, w.status_2xx, w.status_5xx, w.sessions_max) == (50, 13, 12, 7.0)
    assert back.applied("fs.access:2", 41) and not back.applied("fs.access:2", 42)


def test_lateness_is_decided_per_event_against_the_partition_watermark() -> None:
    clock = PartitionClock(lateness_ms=2_000)
    a, b = InstanceState("web", "a", 0), InstanceState("web", "b", 0)
    assert a.add_access(ev(1_000, instance="a"), W, clock)
    assert a.add_access(ev(12_500, instance="a"), W, clock)  # watermark 10 500: window [0, 10 000) is over
    assert not b.add_access(ev(9_000, instance="b"), W, clock)  # same partition: late, whatever the batching
    assert b.late == 1
    assert a.add_access(ev(9_999, instance="a"), W, PartitionClock(2_000, max_ts=11_999))  # within lateness


def test_closed_windows_stay_pending_until_acknowledged_and_late_ones_are_reported() -> None:
    clock = PartitionClock(lateness_ms=0)
    st = InstanceState("web", "s1", 0)
    st.add_access(ev(1_000), W, clock)
    st.add_access(ev(25_000), W, clock)
    (first, partial), = st.close(clock.watermark, W, emitted_at=9)
    assert first.window_start == 0 and partial.acc["r"] == 1
    assert not st.add_access(ev(3_000), W, clock)  # closed: late, not counted, not reopened
    assert pending_windows([st]) == [first.model_dump()]
    st.add_access(ev(31_000), W, clock)
    (second, _), = st.close(30_000, W, emitted_at=10)
    assert (second.window_start, second.requests, second.late_events) == (20_000, 1, 1)
    back = InstanceState.loads(st.dumps())
    assert [w["window_start"] for w in pending_windows([back])] == [0, 20_000]
    assert back.pending_closed()[0] == (first, partial)  # republished as they were after a recovery


def test_an_idle_instance_is_forgotten_only_when_that_changes_no_count() -> None:
    clock = PartitionClock(lateness_ms=0)
    st = InstanceState("web", "s1", 0)
    st.add_access(ev(1_000), W, clock)
    assert not st.forgettable(clock.watermark, 0)  # an open window
    st.close(W, W, emitted_at=1)  # by wall clock: ahead of the partition's event time
    assert st.closed_before == W and clock.watermark == 1_000
    assert not st.forgettable(W, 0)  # unacknowledged
    st.pending.clear()
    assert not st.forgettable(clock.watermark, 0)  # an event of [0, W) would not be late by the partition yet
    assert st.forgettable(W, 0) and not st.forgettable(W + 4_999, 5_000) and st.forgettable(W + 5_000, 5_000)
    fresh = InstanceState("web", "s1", 0)  # what comes back once forgotten: the same event is late for it too
    assert fresh.add_access(ev(1_500), W, PartitionClock(0, max_ts=W)) is False
    st.add_access(ev(2_000), W, clock)  # late: reported with the next window, so kept
    assert st.late == 1 and not st.forgettable(10 * W, 0)


def test_non_signal_samples_are_ignored_and_counters_become_increases() -> None:
    clock = PartitionClock(lateness_ms=0)
    st = InstanceState("web", "s1", 0)
    assert st.add_sample(sample(1_000, "haproxy_server_bytes_in_total", 5), W, clock) is None
    for ts, value in [(1_000, 10), (2_000, 13), (12_000, 20), (13_000, 4)]:  # 4: the counter was reset
        assert st.add_sample(sample(ts, "haproxy_server_connection_errors_total", value), W, clock)
    st.add_sample(sample(12_000, "haproxy_server_current_queue", 3), W, clock)
    windows = [w for w, _ in st.close(30_000, W, emitted_at=1)]
    assert [(w.conn_errors, w.queue_max) for w in windows] == [(3.0, 0.0), (11.0, 3.0)]
    assert (counter_delta(None, 5), counter_delta(5, 7), counter_delta(7, 2)) == (0.0, 2.0, 2.0)


def partial(instance: str, requests: int, latency: float = 5.0) -> WindowPartial:
    acc = WindowAcc()
    for _ in range(requests):
        acc.add(200, latency, 10)
    acc.sessions_max = requests
    return WindowPartial(service="web", instance=instance, window_start=0, acc=acc.to_dict(), late_events=1)


def test_service_window_merges_instances_and_ignores_replays() -> None:
    sw = ServiceWindow("web", 0, partition=1)
    assert sw.add(partial("a", 3), now=100.0)
    assert not sw.due(now=100.5, grace_s=1.0)  # waits for the other instances
    assert sw.add(partial("b", 2, latency=50.0), now=100.2)
    assert not sw.add(partial("b", 2, latency=50.0), now=100.4)  # a replayed partial replaces itself
    assert sw.due(now=101.3, grace_s=1.0)
    w = sw.emit(W, now_ms=101_300)
    assert (w.instance, w.requests, w.bytes_sent, w.sessions_max, w.late_events) == (SERVICE_WIDE, 5, 50, 5.0, 2)
    assert abs(w.latency_p90_ms - 50.0) <= 50.0 * 2 * SKETCH_RELATIVE_ACCURACY
    assert not sw.due(now=200.0, grace_s=1.0) and pending_windows([sw]) == [w.model_dump()]
    assert sw.add(partial("c", 1), now=102.0)  # a late instance window corrects the `*` row ...
    again = sw.emit(W, now_ms=101_300)
    assert again.requests == 6 and again.emitted_at > w.emitted_at  # ... and replaces it


def test_backend_gauges_survive_serialisation_and_old_states_read_zero() -> None:
    clock = PartitionClock(lateness_ms=0)
    st = InstanceState("web", "s1", partition=0)
    st.add_access(ev(1_000), W, clock)
    assert st.add_sample(sample(2_000, "foresight_backend_resource_ratio", 0.6), W, clock)
    assert st.add_sample(sample(3_000, "foresight_backend_busy_workers_ratio", 0.3), W, clock)
    (w, p), = InstanceState.loads(st.dumps()).close(20_000, W, emitted_at=5)
    assert (w.resource_max, w.busy_max) == (0.6, 0.3)
    old = {k: v for k, v in p.acc.items() if k not in ("rs", "bz")}  # a changelog written before the gauges
    back = WindowAcc.from_dict(old)
    assert (back.requests, back.resource_max, back.busy_max) == (1, 0.0, 0.0)
    sw = ServiceWindow("web", 0, partition=0)
    other = WindowAcc()
    other.resource_max, other.busy_max, other.sessions_max = 0.9, 0.1, 2.0
    sw.add(p, now=0.0)
    sw.add(WindowPartial(service="web", instance="s2", window_start=0, acc=other.to_dict()), now=0.0)
    sw.add(WindowPartial(service="web", instance="s3", window_start=0, acc=old), now=0.0)
    merged = sw.emit(W, now_ms=1)
    assert (merged.resource_max, merged.busy_max, merged.sessions_max) == (0.9, 0.3, 2.0)


def test_busy_mean_survives_serialisation_extends_merges_and_old_states_read_zero() -> None:
    """The busy samples' sum and count: pooled over an instance's windows (`extend`), the highest instance
    mean for `*` (`merge`); a changelog or partial written before them reads a mean of 0."""
    clock = PartitionClock(lateness_ms=0)
    st = InstanceState("web", "s1", partition=0)
    st.add_access(ev(1_000), W, clock)
    for ts, v in ((2_000, 0.25), (4_000, 1.0), (6_000, 0.25)):
        assert st.add_sample(sample(ts, "foresight_backend_busy_workers_ratio", v), W, clock)
    (w, p), = InstanceState.loads(st.dumps()).close(20_000, W, emitted_at=5)
    assert (w.busy_max, w.busy_mean) == (1.0, 0.5)
    old = {k: v for k, v in p.acc.items() if k not in ("bzs", "bzn")}  # written before the mean
    back = WindowAcc.from_dict(old)
    assert (back.busy_max, back.busy_mean) == (1.0, 0.0)
    longer = WindowAcc.from_dict(p.acc)
    other = WindowAcc()
    other.add_signal("busy", 0.75)
    longer.extend(other)
    assert (longer.busy_n, longer.busy_mean) == (4, 0.5625)  # (1.5 + 0.75) / 4
    merged = WindowAcc()
    for acc in (WindowAcc.from_dict(p.acc), other, back, WindowAcc()):
        merged.merge(acc)
    assert (merged.busy_max, merged.busy_mean) == (1.0, 0.75)  # the highest instance mean: `other`'s
    sw = ServiceWindow("web", 0, partition=0)
    sw.add(p, now=0.0)
    sw.add(WindowPartial(service="web", instance="s3", window_start=0, acc=old), now=0.0)
    assert sw.emit(W, now_ms=1).busy_mean == 0.5


def test_service_window_retires_only_when_settled_and_acknowledged() -> None:
    sw = ServiceWindow("web", 0, partition=1)
    sw.add(partial("a", 1), now=0.0)
    sw.emit(W, now_ms=1)
    assert not sw.retire(now=1_000.0, retain_s=60)  # still pending for ClickHouse
    sw.pending = None
    assert not sw.retire(now=30.0, retain_s=60) and sw.retire(now=61.0, retain_s=60)
    back = ServiceWindow.loads(sw.dumps())
    assert back.done and not back.add(partial("b", 1), now=62.0)


def test_instance_and_service_stages_equal_the_single_process_aggregator() -> None:
    """Split over partitions and merged by service, the windows equal the one-process computation."""
    rng = random.Random(11)
    events = sorted((ev(rng.randrange(0, 60_000), status=rng.choice([200, 302, 404, 500]),
                        latency=rng.uniform(1, 300), size=rng.randrange(1, 999), instance=f"s{rng.randrange(5)}")
                     for _ in range(3_000)), key=lambda e: e["ts"])
    single = WindowAggregator(window_s=10, allowed_lateness_s=0)
    single.add_events(events)
    want = {(w.instance, w.window_start): w for w in single.close(10**9, emitted_at=1)}

    states = {f"s{i}": InstanceState("web", f"s{i}", partition=i % 2) for i in range(5)}
    clocks = [PartitionClock(0), PartitionClock(0)]
    for e in events:
        st = states[e["instance"]]
        assert st.add_access(e, W, clocks[st.partition])
    services: dict[int, ServiceWindow] = {}
    got = {}
    for st in states.values():
        for w, p in st.close(10**9, W, emitted_at=1):
            got[(w.instance, w.window_start)] = w
            services.setdefault(p.window_start, ServiceWindow("web", p.window_start, 0)).add(p, now=0.0)
    for start, sw in services.items():
        got[(SERVICE_WIDE, start)] = sw.emit(W, now_ms=1)
    assert set(got) == set(want)
    for key, w in want.items():
        fields = ("requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "bytes_sent")
        assert [getattr(got[key], f) for f in fields] == [getattr(w, f) for f in fields], key
        assert got[key].latency_p99_ms == pytest.approx(w.latency_p99_ms)


def events_and_samples(seed: int, n: int = 3_000) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    events = sorted((ev(rng.randrange(0, 60_000), status=rng.choice([200, 302, 404, 500]),
                        latency=rng.uniform(1, 300), size=rng.randrange(1, 999), instance=f"s{rng.randrange(5)}")
                     for _ in range(n)), key=lambda e: e["ts"])
    samples = [sample(ts, name, rng.choice([0.1, 0.5, 0.9]) if "ratio" in name else rng.randrange(20),
                      instance=f"s{i}")
               for ts in range(500, 60_000, 1_000) for i in range(5)
               for name in ("haproxy_server_current_sessions", "haproxy_server_current_queue",
                            "foresight_backend_resource_ratio", "foresight_backend_busy_workers_ratio")]
    return events, samples


@pytest.mark.parametrize("instance_window_s", [10, 5, 2, 1])
def test_short_instance_windows_merge_into_the_service_windows_of_the_single_process_aggregator(
        instance_window_s: int) -> None:
    """Instance windows of `instance_window_s`, `*` windows of 10 s: split over partitions, merged by
    service, in any order and with replays, both equal the one-process computation; each `*` window's
    counts are the sums of its instances' windows, its peaks the sums (sessions, queue) or the highest
    (ratios) of each instance's peak within it."""
    iw = instance_window_s * 1000
    events, samples = events_and_samples(7)
    single = WindowAggregator(window_s=10, allowed_lateness_s=0, instance_window_s=instance_window_s)
    single.add_events(events)
    single.add_samples(samples)
    want = {(w.instance, w.window_start): w for w in single.close(10**9, emitted_at=1)}

    states = {f"s{i}": InstanceState("web", f"s{i}", partition=i % 2) for i in range(5)}
    clocks = [PartitionClock(0), PartitionClock(0)]
    for item in sorted([*events, *samples], key=lambda x: x["ts"]):  # samples in time with the events
        st = states[item["instance"]]
        clock = clocks[st.partition]
        assert st.add_sample(item, iw, clock) if "name" in item else st.add_access(item, iw, clock)
    got, partials = {}, []
    for st in states.values():
        for w, p in st.close(10**9, iw, emitted_at=1):
            got[(w.instance, w.window_start)] = w
            assert w.window_end - w.window_start == iw and w.window_start % iw == 0
            partials.append(p)
    random.Random(1).shuffle(partials)
    services: dict[int, ServiceWindow] = {}
    for p in [*partials, *partials[:40]]:  # replays change nothing
        start = p.window_start - p.window_start % W
        services.setdefault(start, ServiceWindow("web", start, 0)).add(p, now=0.0)
    for start, sw in services.items():
        got[(SERVICE_WIDE, start)] = sw.emit(W, now_ms=1)
    assert set(got) == set(want)
    fields = ("requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "bytes_sent", "sessions_max",
              "queue_max", "resource_max", "busy_max", "window_end", "rate")
    for key, w in want.items():
        assert [getattr(got[key], f) for f in fields] == [getattr(w, f) for f in fields], key
        assert got[key].latency_p99_ms == pytest.approx(w.latency_p99_ms)
        assert got[key].busy_mean == pytest.approx(w.busy_mean) and w.busy_mean > 0, key
    for (instance, start), w in got.items():
        if instance != SERVICE_WIDE:
            continue
        inside = [v for (i, s), v in got.items() if i != SERVICE_WIDE and start <= s < start + W]
        assert len(inside) == 5 * (W // iw)  # every instance has events and samples in every sub-window
        assert w.requests == sum(v.requests for v in inside) and w.bytes_sent == sum(v.bytes_sent for v in inside)
        peaks = {i: max(v.sessions_max for (j, s), v in got.items() if j == i and start <= s < start + W)
                 for i in states}
        assert w.sessions_max == sum(peaks.values())
        assert w.resource_max == max(v.resource_max for v in inside)
        means = {i: [(v.busy_mean, (v.window_end - v.window_start) // 1000) for (j, s), v in got.items()
                     if j == i and start <= s < start + W] for i in states}  # a sample a second in each
        assert w.busy_mean == pytest.approx(max(sum(m * n for m, n in ms) / sum(n for _, n in ms)
                                                for ms in means.values()))


def test_a_service_window_of_short_instance_windows_waits_for_its_last_ones() -> None:
    """Emitted once settled only when its last instance windows arrived; else it waits a window longer
    (an instance with nothing in them never sends them). A replayed first window is still recognised
    when the state was written before instance windows could be shorter (keyed by instance only)."""
    def part(instance: str, start: int, requests: int) -> WindowPartial:
        acc = WindowAcc()
        for _ in range(requests):
            acc.add(200, 5.0, 10)
        return WindowPartial(service="web", instance=instance, window_start=start, acc=acc.to_dict())

    sw = ServiceWindow("web", 20_000, partition=0)
    assert sw.add(part("a", 20_000, 1), now=0.0) and sw.add(part("a", 22_000, 2), now=0.0)
    assert not sw.due(now=1.5, grace_s=1.0, window_ms=W, instance_window_ms=2_000)  # 24..30 s still open
    assert sw.due(now=11.0, grace_s=1.0, window_ms=W, instance_window_ms=2_000)  # ... or never coming
    assert sw.add(part("b", 28_000, 4), now=2.0)
    assert not sw.due(now=2.5, grace_s=1.0, window_ms=W, instance_window_ms=2_000)
    assert sw.due(now=3.0, grace_s=1.0, window_ms=W, instance_window_ms=2_000)
    assert sw.emit(W, now_ms=3_000).requests == 7
    old = ServiceWindow.loads(sw.dumps())
    assert not old.add(part("a", 20_000, 1), now=4.0) and not old.add(part("a", 22_000, 2), now=4.0)
    assert old.add(part("a", 22_000, 3), now=4.0) and old.emit(W, now_ms=4_000).requests == 8
