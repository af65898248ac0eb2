"""The demo autoscaler's trace clock: wall windows relabelled into trace minutes, records relabelled back."""


import pytest

from infra.core.features_table import ServiceWindow
from infra.trace_time import TraceTime, WallTimeSink, spread_minutes, trace_windows
from lb_adapters.schemas import Decision, PredictionRecord
from tests.unit.decision_sinks import RecordingSink

TT = TraceTime(wall0=1000.0, trace0=807_782_400.0, speedup=60.0, scale=2.0)  # 1995-08-07 08:00 UTC


def test_wall_and_trace_time_are_inverse_and_rates_scale_by_speedup_and_scale() -> None:
    assert TT.trace(1000.0) == 807_782_400.0
    assert TT.trace(1010.0) == 807_782_400.0 + 600  # ten wall seconds, ten trace minutes
    assert TT.wall(TT.trace(1234.5)) == pytest.approx(1234.5)
    assert TT.rate_factor == 120.0


def test_a_live_window_becomes_trace_minutes_in_trace_units() -> None:
    # 10 wall seconds from the replay's start, 1,200 requests (600 of the trace's, sent twice)
    [w] = trace_windows([ServiceWindow(1000, 1010, 1200, 120.0)], TT, history_s=1.0)
    assert (w.start_s, w.end_s, w.requests) == (807_782_400, 807_783_000, 600)
    assert w.rate == pytest.approx(1.0)  # 600 requests over 600 trace seconds; 120 wall req/s / 120
    minutes = spread_minutes([w], w.start_s, w.end_s)
    assert [m for m, _ in minutes] == list(range(807_782_400, 807_783_000, 60))
    assert {n for _, n in minutes} == {60}


def test_before_the_replay_only_the_written_history_counts() -> None:
    history = ServiceWindow(999, 1000, 80, 80.0)  # one trace minute, written as the service's past
    earlier_run = ServiceWindow(990, 1000, 900, 90.0)  # a 10 s window another run left there
    windows = trace_windows([earlier_run, history], TT, history_s=1.0)
    assert [(w.start_s, w.end_s, w.requests) for w in windows] == [(807_782_340, 807_782_400, 40)]


def test_spreading_splits_a_window_by_overlap_and_leaves_uncovered_minutes_out() -> None:
    w = ServiceWindow(30, 150, 120, 1.0)  # 120 requests over two minutes that straddle three
    assert spread_minutes([w], 0, 240) == [(0, 30), (60, 60), (120, 30)]
    assert spread_minutes([w], 60, 120) == [(60, 60)]
    assert spread_minutes([], 0, 240) == []


def test_records_go_back_to_wall_time_and_forecast_rates_to_wall_units() -> None:
    now_ms = round(TT.trace(1100.0) * 1000)
    forecast = PredictionRecord(ts=now_ms, kind="forecast", service="shop", model="m", model_version="v",
                                horizon_s=1200, quantile=0.99, value=0.5)
    shadow = PredictionRecord(ts=now_ms, kind="hpa_shadow", service="shop", model="reactive", model_version="hpa",
                              value=4)
    decision = Decision(ts=now_ms, service="shop", actuator="scaler", target="pool/shop", action="scale", before=3,
                        after=4, reason="r", prediction_ref=forecast.ref())
    out = RecordingSink()
    WallTimeSink(out, TT).publish([decision], [forecast, shadow])
    [d] = out.decisions
    assert d.ts == 1_100_000 and (d.before, d.after) == (3, 4)
    f, h = out.predictions
    assert (f.ts, f.horizon_s, f.value) == (1_100_000, 20, 60.0)  # 0.5 trace req/s = 60 wall req/s
    assert (h.ts, h.value) == (1_100_000, 4)  # a count has no unit
    assert d.prediction_ref == f.ref()  # the decision still points at its prediction rows
