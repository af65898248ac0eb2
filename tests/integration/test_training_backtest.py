"""`foresight backtest` end to end on a small synthetic trace (no server needed, but minutes of CPU)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.test_training_ray import write_trace


def test_backtest_prints_the_result_json_last_and_writes_plots(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    write_trace(trace, days=6, seed=3)
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "backtest", "--trace", str(trace), "--scale", "20", "--capacity", "10",
         "--startup", "120", "--epochs", "2", "--report", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["forecast"]) == {"1", "5", "15", "30"}
    row = result["forecast"]["5"]
    assert {"model", "seasonal_naive", "ewma", "holt_winters"} <= set(row)
    assert set(row["model"]) >= {"mase", "smape", "pinball_p90", "coverage_p90"}
    # The floor references sit apart from the forecasters: below the model, never in the table.
    h5 = result["reference"]["5"]
    assert "centred_ma" not in row
    model_ratio = row["model"]["mase"] / row["seasonal_naive"]["mase"]
    assert 0 < h5["poisson_floor"] < model_ratio
    assert result["summary"]["mase5_poisson_floor_vs_seasonal_naive"] == h5["poisson_floor"]
    assert "how low MASE" in proc.stdout
    auto = result["autoscale"]
    assert auto["oracle"]["underprov_pct"] == 0.0
    assert result["summary"]["replica_seconds_predictive_vs_hpa"] > 0
    for name in ("predictive", "hpa"):
        assert set(auto[name]) >= {"underprov_pct", "replica_seconds", "actions", "knob", "knob_value"}
        assert auto[name]["replica_seconds"] >= auto["oracle"]["replica_seconds"]
    # the realised SLO per week and the replica-seconds ratios per day, from the test range's start
    weeks, days = auto["per_week"], auto["per_day"]
    assert sum(w["minutes"] for w in weeks) == sum(d["minutes"] for d in days) == auto["predictive"]["minutes"]
    assert {"predictive", "hpa", "oracle", "predictive_vs_hpa"} <= set(weeks[0])
    assert result["setup"]["feedback_gain"] > 0  # the online headroom feedback is on by default
    for name in ("predictive", "hpa"):
        assert auto[name]["slo_gap_points"] == round(auto[name]["underprov_pct"] - 0.5, 3)
    assert "per week of the test range" in proc.stdout
    # where predictive's replica-seconds above the oracle's go: the parts add up to its ratio
    parts = auto["breakdown"]
    steps = ("burst_noise", "forecaster", "startup_lead", "scale_down_guardrails")
    assert abs(parts["oracle"] + sum(parts[k] for k in steps) - parts["total"]) < 0.005
    assert parts["total"] == auto["predictive"]["vs_oracle"]
    assert parts["allocation_floor"] >= 1.0
    assert "where predictive's replica-seconds go" in proc.stdout
    assert (report / "forecast.png").stat().st_size > 10_000
    assert (report / "replicas.png").stat().st_size > 10_000
