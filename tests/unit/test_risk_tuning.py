"""The drain operating point chosen on the train seeds' out-of-fold scores, and the evaluation using it."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from infra.risk_eval import model_knobs
from infra.risk_tuning import choose, sweep
from lb_adapters.policies.drain import DrainKnobs

BASE = DrainKnobs(drain_above=0.8, readmit_below=0.3, readmit_after=2, max_drained_fraction=0.25)


def row(above: float, after: int, recall: float, lead: float | None, false: int, hours: float = 10.0) -> dict[str, Any]:
    return {"drain_above": above, "drain_after": after, "recall": recall, "lead_s_p50": lead, "false_drains": false,
            "false_drains_per_instance_hour": round(false / hours, 3)}


def test_choose_keeps_the_budget_then_recall_then_a_lead_that_meets_the_target() -> None:
    rows = [row(0.5, 1, 0.9, 50.0, 5),   # best recall, far over budget
            row(0.8, 1, 0.6, 20.0, 1),   # within 0.1/h (1 in 10 h), best recall, short lead
            row(0.8, 3, 0.6, 35.0, 1),   # same recall, lead meets 30 s: preferred
            row(0.9, 3, 0.5, 45.0, 0)]
    got = choose(rows, max_false_per_h=0.1, min_lead_s=30)
    assert (got["drain_above"], got["drain_after"], got["within_budget"]) == (0.8, 3, True)


def test_choose_without_a_point_in_budget_takes_the_fewest_false_drains_and_says_so() -> None:
    rows = [row(0.5, 1, 0.9, 50.0, 5), row(0.9, 2, 0.4, 30.0, 2), row(0.95, 1, 0.5, 30.0, 2)]
    got = choose(rows, max_false_per_h=0.1, min_lead_s=30)
    assert (got["drain_above"], got["drain_after"], got["within_budget"]) == (0.95, 1, False)


def scored_windows() -> pd.DataFrame:
    """One service: `leak` rises to risk 0.95 from 40 s before its failure at 200 s; `noisy` (healthy) has two
    single-window spikes to 0.9; the other two stay at 0.1."""
    rows = []
    for s in range(0, 240, 2):
        for inst in ("leak", "noisy", "a", "b"):
            if inst == "leak" and s >= 200:
                continue  # crashed
            risk = 0.1
            if inst == "leak" and s + 2 >= 160:
                risk = 0.95
            if inst == "noisy" and s in (60, 120):
                risk = 0.9
            rows.append({"service": "s1", "instance": inst, "window_start": s, "window_end": s + 2, "risk": risk,
                         "fault_kind": "leak" if inst == "leak" else "",
                         "failure_ms": 200_000.0 if inst == "leak" else math.nan})
    return pd.DataFrame(rows)


def test_sweep_replays_the_drain_policy_so_consecutive_windows_remove_a_spike() -> None:
    rows = {(r["drain_above"], r["drain_after"]): r
            for r in sweep(scored_windows(), BASE, horizon_s=60, delay_s=0, thresholds=(0.2, 0.8), drain_after=(1, 2))}
    assert (0.2, 1) not in rows  # at or below readmit_below: no hysteresis possible, skipped
    one, two = rows[(0.8, 1)], rows[(0.8, 2)]
    assert one["false_drains"] == 2 and one["recall"] == 1.0  # each spike drains `noisy` (re-admitted between)
    assert two["false_drains"] == 0 and two["recall"] == 1.0 and two["lead_s_p50"] == 38.0  # 2 s later than 40
    best = choose(list(rows.values()), max_false_per_h=0.1, min_lead_s=30)
    assert (best["drain_above"], best["drain_after"]) == (0.8, 2)


def test_evaluation_drains_at_the_manifests_operating_point() -> None:
    knobs, source = model_knobs(BASE, {"operating_point": {"drain_above": 0.9, "drain_after": 3}})
    assert (knobs.drain_above, knobs.drain_after, knobs.max_drained_fraction) == (0.9, 3, 0.25) and "manifest" in source
    assert model_knobs(BASE, {})[0] == BASE
    # as the live controller takes it: a point at or below readmit_below (no hysteresis left) is not taken
    knobs, source = model_knobs(BASE, {"operating_point": {"drain_above": 0.3, "drain_after": 3}})
    assert knobs == BASE and source.startswith("settings:") and "not above readmit_below" in source
