"""`foresight backtest`: load a trace, run the backtest, print tables and the JSON result."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from training.autoscale import ScalingSpec
from training.backtest import BacktestConfig, run_backtest
from training.fit import TrainConfig
from training.plots import write_report
from training.progress import epoch_bar, say
from training.series import load_trace
from training.splits import split_by_index


def parse_start(start: str | None) -> float | None:
    """An ISO 8601 timestamp as Unix seconds; without an offset it is taken as UTC."""
    if start is None:
        return None
    moment = datetime.fromisoformat(start)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def backtest_command(trace: Path, *, test_from: int | None, val_from: int | None, scale: float, capacity: float,
                     startup_s: float, slo_pct: float, start: str | None, report: Path | None, epochs: int,
                     seed: int, threads: int, as_json: bool, refit: bool = True,
                     feedback_gain: float | None = None, breakdown: bool = True) -> dict[str, Any]:
    say(f"reading {trace}")
    series = load_trace(trace, parse_start(start))
    splits = split_by_index(series, test_from, val_from)
    cfg = BacktestConfig(scale=scale, spec=ScalingSpec(capacity=capacity, startup_s=startup_s), slo_pct=slo_pct,
                         train=TrainConfig(epochs=epochs, seed=seed, torch_threads=threads), refit=refit,
                         breakdown=breakdown,
                         **({} if feedback_gain is None else {"feedback_gain": feedback_gain}))
    with epoch_bar(epochs) as on_epoch:
        bt = run_backtest(series, splits, cfg, say, on_epoch)
    if report is not None:
        for path in write_report(bt, series, report):
            say(f"wrote {path}")
    if not as_json:
        print_tables(bt.result)
    print(json.dumps(bt.result))
    return bt.result


def print_tables(result: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="forecast, test range (MASE vs seasonal-naive scale; p90 pinball in req/s)")
    for col in ("horizon", "model", "MASE", "sMAPE %", "pinball p90", "coverage p90"):
        table.add_column(col)
    for h, row in result["forecast"].items():
        for name, m in row.items():
            table.add_row(h, name, f"{m['mase']:.3f}", f"{m['smape']:.1f}", f"{m['pinball_p90']:.4f}",
                          f"{m['coverage_p90']:.3f}")
    console.print(table)
    floor = Table(title="how low MASE can go, test range (x seasonal naive; not forecasters)")
    for col in ("horizon", "Poisson floor (rate known)", "centred MA (sees the future)"):
        floor.add_column(col)
    for h, ref in result.get("reference", {}).items():
        floor.add_row(h, f"{ref['poisson_floor']:.3f}", f"{ref['centred_ma']:.3f}")
    console.print(floor)
    auto = Table(title="autoscaling, test range")
    for col in ("policy", "under-provisioned %", "replica-seconds", "x oracle", "actions", "knob"):
        auto.add_column(col)
    for name in ("predictive", "hpa", "oracle"):
        r = result["autoscale"][name]
        knob = f"{r['knob']}={r['knob_value']}" if r.get("knob") else ""
        auto.add_row(name, f"{r['underprov_pct']:.3f}", f"{r['replica_seconds']:.0f}", str(r["vs_oracle"]),
                     str(r["actions"]), knob)
    console.print(auto)
    weeks = Table(title="realised under-provisioned minutes (%) per week of the test range "
                        f"(SLO {result['setup']['slo_pct']}%)")
    for col in ("from", "minutes", "predictive", "hpa", "predictive / hpa replica-s", "predictive / oracle"):
        weeks.add_column(col)
    for row in result["autoscale"].get("per_week", []):
        weeks.add_row(row["from"], str(row["minutes"]), str(row["predictive"]["underprov_pct"]),
                      str(row["hpa"]["underprov_pct"]), str(row["predictive_vs_hpa"]), str(row["predictive_vs_oracle"]))
    console.print(weeks)
    parts = result["autoscale"].get("breakdown")
    if parts:
        split = Table(title="where predictive's replica-seconds go, test range (x the oracle's; each variant "
                            "tuned on validation)")
        for col in ("oracle", "burst noise", "forecaster", "startup lead", "scale-down guardrails", "predictive"):
            split.add_column(col)
        split.add_row(*(str(parts[k]) for k in ("oracle", "burst_noise", "forecaster", "startup_lead",
                                                "scale_down_guardrails", "total")))
        console.print(split)
        console.print(f"burst noise = allocation floor {parts['allocation_floor']} x the oracle, knowing the minute "
                      f"before and the 10 before (knowing the minutes on both sides: "
                      f"{parts['allocation_floor_centred']})")
        console.print(f"integer rounding (ceil) in the oracle: {parts['integer_rounding']['oracle']}, in the "
                      f"startup-0 variant: {parts['integer_rounding']['startup_0']} (x the oracle's replica-seconds)")
    spread = result["autoscale"].get("per_day_spread", {})
    for key, s in spread.items():
        if s:
            console.print(f"per day, {key.replace('_', ' ')}: min {s['min']}, median {s['median']}, max {s['max']}")
