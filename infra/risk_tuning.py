"""The risk model's operating point (drain threshold, consecutive risky windows), chosen on TRAIN seeds only.

`foresight train --kind risk` scores every train window with a model trained without that window's seed
fold (out-of-fold, calibrated). This module replays the drain policy (`decide_drains`, through
`infra.risk_eval.drain_alarms`, exactly as `foresight evaluate risk` does) on those out-of-fold scores for a
grid of (`drain_above`, `drain_after`), scores each point as the evaluation does, and keeps the point
that meets the false-drain budget with the best recall, then the longest lead. The held-out seeds play
no part: they are not in the training windows at all (`training.risk.refuse_heldout`).

The answer goes into the model's manifest (`metrics.operating_point`), and `foresight evaluate risk`
drains at that point, so the threshold is a product of training, not a hand-edited constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from infra.risk_eval import drain_alarms, score_alarms, truths
from lb_adapters.policies.drain import DrainKnobs

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
DRAIN_AFTER: tuple[int, ...] = (1, 2, 3, 4, 5, 6)


def sweep(oof: Any, base: DrainKnobs, horizon_s: float, delay_s: float,
          thresholds: Sequence[float] = THRESHOLDS, drain_after: Sequence[int] = DRAIN_AFTER) -> list[dict[str, Any]]:
    """One row per (drain_above, drain_after): the evaluation's overall figures on `oof` (windows with `risk`).
    Thresholds at or below `base.readmit_below` are skipped (the policy's hysteresis needs readmit < drain)."""
    truth = truths(oof)
    until = {str(k): float(v) for k, v in oof.groupby("service")["window_end"].max().items()}
    rows = []
    for above in thresholds:
        if above <= base.readmit_below:
            continue
        # Only services with a window at or above the threshold can drain: replay those alone.
        hot = oof[oof["service"].isin(set(oof.loc[oof["risk"] >= above, "service"]))]
        for after in drain_after:
            knobs = replace(base, drain_above=above, drain_after=after)
            alarms = [a for a in drain_alarms(hot, knobs, delay_s) if a[2] <= until[a[0]] + delay_s]
            m = score_alarms(alarms, truth, horizon_s, until)["all"]
            rows.append({"drain_above": above, "drain_after": after, "recall": m["recall"] or 0.0,
                         "precision": m["precision"], "lead_s_p50": m["lead_s_p50"],
                         "false_drains": m["false_drains"], "early_alarms": m["early_alarms"],
                         "false_drains_per_instance_hour": m["false_drains_per_instance_hour"],
                         "failures": m["failures"], "caught": m["caught"], "instance_hours": m["instance_hours"]})
    return rows


def choose(rows: Sequence[dict[str, Any]], max_false_per_h: float, min_lead_s: float) -> dict[str, Any]:
    """The point to drain at: within the false-drain budget, the best recall, then a lead p50 of at least
    `min_lead_s` if any point keeps it, then the longest lead, then the fewest false drains, then the
    lowest threshold and fewest rounds (the earliest drain). No point within budget: the fewest false
    drains per instance-hour (then recall), flagged `within_budget: false`."""
    if not rows:
        raise ValueError("no operating point to choose from")

    def lead(r: dict[str, Any]) -> float:
        return float(r["lead_s_p50"]) if r["lead_s_p50"] is not None else -1.0

    ok = [r for r in rows if (r["false_drains_per_instance_hour"] or 0.0) <= max_false_per_h]
    if ok:
        best = max(ok, key=lambda r: (r["recall"], lead(r) >= min_lead_s, lead(r), -r["false_drains"],
                                      -r["drain_above"], -r["drain_after"]))
    else:
        best = min(rows, key=lambda r: (r["false_drains_per_instance_hour"] or 0.0, -r["recall"], -lead(r)))
    return {**best, "within_budget": bool(ok), "max_false_per_instance_hour": max_false_per_h,
            "min_lead_s": min_lead_s}


def operating_point(oof: Any, base: DrainKnobs, horizon_s: float, delay_s: float, max_false_per_h: float,
                    min_lead_s: float) -> dict[str, Any]:
    """What `train_risk` stores: the chosen point, how it was chosen and the whole validation sweep."""
    rows = sweep(oof, base, horizon_s, delay_s)
    chosen = choose(rows, max_false_per_h, min_lead_s)
    return {"drain_above": chosen["drain_above"], "drain_after": chosen["drain_after"],
            "chosen_on": "out-of-fold scores of the train seeds (folds by seed), replayed through decide_drains",
            "validation": chosen, "sweep": rows}
