"""The risk model's labels, training guard, the reactive baselines' rules and the evaluation metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pytest
import torch

from infra.core.health_features import RISK_COLUMNS
from infra.risk_eval import (
    Truth,
    consecutive_error_alarms,
    drain_alarms,
    is_layer7_error,
    request_rule_alarms,
    score_alarms,
)
from lb_adapters.policies.drain import DrainKnobs
from training.risk import HeldOutSeedError, RiskTrainConfig, refuse_heldout, train_risk
from training.risk_command import read_train_windows
from training.risk_features import label_windows, risk_inputs


def frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    base = {"service": "svc", "instance": "a", "requests": 10, "status_5xx": 0, "latency_p50_ms": 10.0,
            "latency_p99_ms": 20.0, "sessions_max": 1.0, "queue_max": 0.0, "failure_ms": math.nan,
            "fault_kind": "", "seed": 1}
    out = pd.DataFrame([{**base, **r} for r in rows])
    out["window_end"] = out["window_start"] + 2
    return out


def test_label_is_failure_within_the_horizon_after_the_window_end() -> None:
    # failure at t = 100 s; windows end at 38, 40, 98, 100, 102
    w = frame([{"window_start": s, "failure_ms": 100_000.0} for s in (36, 38, 96, 98, 100)])
    labelled = label_windows(w, horizon_s=60)
    assert labelled["label"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]  # end 38: 62 s before; end 40: exactly 60
    assert labelled["keep"].all()  # ends at/after the failure: failed, so positive (a drain must take it too)


def test_healthy_instance_is_never_positive() -> None:
    labelled = label_windows(frame([{"window_start": s} for s in range(0, 20, 2)]), horizon_s=60)
    assert labelled["label"].sum() == 0 and labelled["keep"].all()


def test_inputs_are_the_health_features_of_each_window_among_its_peers() -> None:
    rows = [{"instance": i, "window_start": s, "latency_p50_ms": p, "resource_max": r}
            for s in (0, 2) for i, p, r in (("a", 10.0, 0.0), ("b", 10.0, 0.0), ("c", 1000.0 if s else 10.0, 0.5))]
    w, x = risk_inputs(frame(rows))
    assert x.shape == (6, len(RISK_COLUMNS)) and x.dtype == np.float32
    p50 = RISK_COLUMNS.index("p50_vs_peers")
    at = {(r.window_start, r.instance): k for k, r in enumerate(w.itertuples())}
    assert x[at[(0, "c")], p50] == 0.0  # like its peers in that window
    assert x[at[(2, "c")], p50] == pytest.approx(np.log(1001.0 / 11.0), rel=1e-5)  # peers of the same window only
    assert x[at[(2, "c")], RISK_COLUMNS.index("resource")] == 0.5


def test_training_refuses_held_out_seeds() -> None:
    with pytest.raises(HeldOutSeedError, match="1003"):
        refuse_heldout([1, 2, 1003], heldout_from=1000)
    w = frame([{"window_start": 0, "seed": 1000}])
    with pytest.raises(HeldOutSeedError):
        train_risk(w, RiskTrainConfig(epochs=1), heldout_from=1000)


def test_reading_a_dataset_for_training_drops_held_out_rows(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    frame([{"window_start": 0, "seed": 3}, {"window_start": 0, "seed": 1001, "service": "h"}]).to_parquet(
        folder / "windows-3-1001.parquet")
    got = read_train_windows(folder, heldout_from=1000)
    assert got["seed"].tolist() == [3]


def synthetic(seeds: range) -> pd.DataFrame:
    """Four instances a seed; `d` creeps up in latency for 60 s and then fails."""
    rows = []
    for seed in seeds:
        for s in range(0, 200, 2):
            for inst in "abcd":
                creep = inst == "d" and s >= 80
                rows.append({"service": f"s{seed}", "instance": inst, "seed": seed, "window_start": s,
                             "latency_p50_ms": 10.0 * (1 + (s - 80) / 5 if creep else 1),
                             "resource_max": (s - 80) / 70 if creep else 0.0,
                             "failure_ms": 150_000.0 if inst == "d" else math.nan,
                             "fault_kind": "leak" if inst == "d" else ""})
    return frame(rows)


def test_training_learns_a_separable_precursor_and_stays_a_probability() -> None:
    module, metrics, smoke = train_risk(synthetic(range(8)), RiskTrainConfig(epochs=40, seed=1), heldout_from=1000)
    assert metrics["positives"] > 0 and metrics["folds"] == 4 and metrics["out_of_fold_windows"] == metrics["windows"]
    out = module(torch.from_numpy(smoke))
    assert out.shape == (len(smoke),) and bool(((out >= 0) & (out <= 1)).all())
    from training.risk import score

    scored = score(module, synthetic(range(100, 101)))
    d, a = scored[scored["instance"] == "d"], scored[scored["instance"] == "a"]
    assert d[(d["window_start"] > 110) & (d["window_start"] < 146)]["risk"].mean() > a["risk"].mean() + 0.3


def test_training_hands_the_out_of_fold_scores_of_train_seeds_to_the_operating_point_chooser() -> None:
    seen: dict[str, pd.DataFrame] = {}

    def chooser(oof: pd.DataFrame) -> dict[str, object]:
        seen["oof"] = oof
        return {"drain_above": 0.9, "drain_after": 2}

    _, metrics, _ = train_risk(synthetic(range(8)), RiskTrainConfig(epochs=3, seed=1), heldout_from=1000,
                               operating_point=chooser)
    oof = seen["oof"]
    assert metrics["operating_point"] == {"drain_above": 0.9, "drain_after": 2}
    assert len(oof) == metrics["out_of_fold_windows"] and set(oof["seed"]) == set(range(8))
    assert oof["risk"].between(0, 1).all() and {"service", "instance", "window_end", "failure_ms"} <= set(oof)


# -- reactive baselines ----------------------------------------------------------------------------
def test_consecutive_errors_reset_on_a_success_and_after_an_ejection() -> None:
    errs = [True, True, False, True, True, True, True, True, True, True, True]
    times = [float(i) for i in range(len(errs))]
    assert consecutive_error_alarms(times, errs, limit=5, dead_s=0.5) == [7.0]  # 3..7; then 8, 9, 10 are 3
    assert consecutive_error_alarms(times, errs, limit=3, dead_s=0.5) == [5.0, 8.0]
    assert consecutive_error_alarms(times, errs, limit=3, dead_s=10.0) == [5.0]  # out (ejected) until 15
    assert consecutive_error_alarms(times, [False] * len(errs), limit=1, dead_s=0) == []


def test_layer7_errors_are_5xx_but_501_and_505() -> None:
    assert [is_layer7_error(s) for s in (200, 404, 500, 501, 503, 504, 505)] == [
        False, False, True, False, True, True, False]


def test_request_rule_orders_by_answer_time_per_server() -> None:
    # a hung request started first but answered (504) last: the run of errors is the answer order
    req = pd.DataFrame({"ts_ms": [0, 100, 200, 300], "latency_ms": [30_000, 0, 0, 0],
                        "service": "s", "instance": ["a", "a", "a", "b"], "status": [504, 500, 500, 500]})
    assert request_rule_alarms(req, limit=3, dead_s=1, is_error=lambda s: s >= 500) == [("s", "a", 30.0)]
    assert request_rule_alarms(req, limit=2, dead_s=1, is_error=lambda s: s >= 500) == [("s", "a", 0.2)]


def test_drain_replay_applies_hysteresis_and_the_drained_fraction() -> None:
    rows = []
    for s in range(0, 20, 2):
        for inst, r in (("a", 0.9), ("b", 0.95), ("c", 0.1), ("d", 0.1)):
            rows.append({"service": "s", "instance": inst, "window_start": s, "window_end": s + 2, "risk": r})
    alarms = drain_alarms(pd.DataFrame(rows), DrainKnobs(drain_above=0.8, max_drained_fraction=0.25), delay_s=1)
    assert alarms == [("s", "b", 3.0)]  # the worst first; a second drain would exceed 1 of 4


# -- metrics ---------------------------------------------------------------------------------------
def test_precision_recall_lead_and_false_drains_on_hand_made_alarms() -> None:
    truth = {("s", "leaky"): Truth("leak", 1000.0, 0.5), ("s", "ok"): Truth("", None, 1.0),
             ("s", "crashy"): Truth("crash", 500.0, 0.5)}
    alarms = [("s", "leaky", 930.0), ("s", "leaky", 960.0),  # 70 s before: false; 40 s before: true, lead 40
              ("s", "ok", 100.0), ("s", "ok", 200.0),         # two false drains
              ("s", "crashy", 506.0)]                         # after the failure: late, not caught
    m = score_alarms(alarms, truth, horizon_s=60, recorded_until={"s": 2000.0})
    a = m["all"]
    assert (a["failures"], a["caught"], a["recall"]) == (2, 1, 0.5)
    assert a["precision"] == round(1 / 4, 3) and a["lead_s_p50"] == 40.0 and a["late_alarms"] == 1
    assert a["false_drains_per_instance_hour"] == round(3 / 2.0, 3)
    assert m["leak"]["recall"] == 1.0 and m["crash"]["recall"] == 0.0 and m["crash"]["detect_delay_s_p50"] == 6.0
    assert m["none"]["false_drains"] == 2 and a["early_alarms"] == 1  # the leak's alarm 70 s ahead
    assert a["false_drains_never_failing_per_instance_hour"] == round(2 / 2.0, 3)  # side figure: without the early one


def test_a_failure_after_the_recording_is_not_counted_in_recall() -> None:
    truth = {("s", "x"): Truth("leak", 3000.0, 0.5)}
    m = score_alarms([], truth, horizon_s=60, recorded_until={"s": 2000.0})
    assert m["all"]["failures"] == 0 and m["all"]["recall"] is None


def test_the_evaluated_baseline_reads_the_served_signals_from_the_windows() -> None:
    from infra.risk_eval import peer_deviation_scores

    gauges = (("a", 0.0), ("b", 0.0), ("c", 0.5))
    peers = frame([{"window_start": 0, "instance": i, "resource_max": r} for i, r in gauges])
    assert peer_deviation_scores(peers)["risk"].tolist()[:2] == [0.0, 0.0]
    assert peer_deviation_scores(peers)["risk"].iloc[2] > 0.9  # the leak's gauge alone, as `/v1/risk` scores it
    old = peers.drop(columns=["resource_max"])  # recorded before the gauge: read as 0, not refused
    assert peer_deviation_scores(old)["risk"].tolist() == [0.0, 0.0, 0.0]


def test_precursors_bound_the_recall_at_a_lead() -> None:
    from infra.risk_eval import precursors

    firsts = pd.DataFrame({"fault_kind": ["leak", "crash", "errors", "slowdown", "leak"],
                           "fault_start_ms": [0.0, 50_000.0, 10_000.0, 0.0, 0.0],
                           "failure_ms": [90_000.0, 50_000.0, 11_500.0, math.nan, 500_000.0],
                           "recorded_until": [300.0] * 5})  # the last leak fails after the recording
    p = precursors(firsts, lead_s=30)
    assert p["by_kind"]["leak"] == {"failures": 1, "min_s": 90.0, "p50_s": 90.0, "max_s": 90.0}
    assert p["by_kind"]["crash"]["max_s"] == 0.0 and p["by_kind"]["errors"]["p50_s"] == 1.5
    assert p["recall_ceiling_at_30s_lead"] == round(1 / 3, 3)


def test_folds_deal_each_fault_kind_across_folds() -> None:
    from training.risk import seed_folds

    seeds = np.repeat(np.arange(12), 3)
    kinds = {0: "leak", 1: "leak", 2: "leak", 3: "leak", 4: "crash", 5: "crash", 6: "errors", 7: "errors"}
    fold_of = seed_folds(seeds, kinds, 4, np.random.default_rng(0))
    assert set(fold_of) == set(range(12))
    assert sorted(fold_of[s] for s in (0, 1, 2, 3)) == [0, 1, 2, 3]  # one leak a fold
    assert {fold_of[s] for s in (4, 5)} != {fold_of[4]} and {fold_of[s] for s in (6, 7)} != {fold_of[6]}


def test_drain_replay_forgets_an_instance_gone_from_the_windows() -> None:
    def replay(dead_until: int) -> list[str]:
        rows = []
        for s in range(0, 80, 2):
            for inst, r in (("a", 0.1), ("dead", 0.1), ("x", 0.95 if s >= 60 else 0.1), ("y", 0.9 if s >= 60 else 0.1)):
                if inst != "dead" or s < dead_until:
                    rows.append({"service": "s", "instance": inst, "window_start": s, "window_end": s + 2, "risk": r})
        knobs = DrainKnobs(drain_above=0.8, max_drained_fraction=0.5)
        return [a[1] for a in drain_alarms(pd.DataFrame(rows), knobs, delay_s=0)]

    assert replay(dead_until=80) == ["x", "y"]  # 4 instances: 2 may be out
    assert replay(dead_until=10) == ["x"]  # its lease long expired: 3 instances, 1 may be out
