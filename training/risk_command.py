"""`foresight train --kind risk`: the risk classifier from a recorded fault dataset's TRAIN seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.core.model_registry import registry_root
from infra.core.settings import ClickHouseSettings
from training.progress import epoch_bar, say
from training.registry import fingerprint
from training.risk import RiskTrainConfig, publish_risk, refuse_heldout, train_risk
from training.train_command import record_in_clickhouse


def read_train_windows(folder: Path, heldout_from: int) -> Any:
    """Every TRAIN window under `folder` (parquet files of `foresight faults record`). The held-out rows are
    dropped by seed, whatever their `split` column says, and the result is checked again."""
    import pandas as pd

    files = sorted(folder.glob("windows-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no windows-*.parquet under {folder}: record with `foresight faults record`")
    windows = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    windows = windows[windows["seed"] < heldout_from]
    refuse_heldout(windows["seed"].unique(), heldout_from)
    if windows.empty:
        raise ValueError(f"no train seed (< {heldout_from}) under {folder}")
    return windows


def train_risk_command(dataset: Path, state_dir: Path, ch: ClickHouseSettings, *, horizon_s: float,
                       heldout_from: int, epochs: int, hidden: int, seed: int, as_json: bool,
                       operating_point: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train, calibrate and register; `operating_point` (from the composition root) picks the drain threshold
    and consecutive windows on the out-of-fold scores of the train seeds, stored in the manifest's metrics."""
    windows = read_train_windows(dataset, heldout_from)
    cfg = RiskTrainConfig(hidden=hidden, epochs=epochs, seed=seed, horizon_s=horizon_s)
    seeds = sorted(int(s) for s in windows["seed"].unique())
    say(f"{len(windows)} instance windows of {len(seeds)} train seed(s) from {dataset}; horizon {horizon_s:g} s")
    with epoch_bar(cfg.epochs) as on_epoch:
        module, metrics, smoke = train_risk(windows, cfg, heldout_from,
                                             lambda e, loss: on_epoch(e + 1, cfg.epochs, loss, float("nan")),
                                             operating_point=operating_point)
    fp = fingerprint({"dataset": str(dataset.resolve()), "seeds": seeds}, windows.to_csv(index=False).encode())
    lengths = (windows["window_end"] - windows["window_start"]).value_counts()
    window_s = float(lengths.index[0])
    if len(lengths) > 1:
        say(f"[yellow]windows of several lengths {sorted(lengths.index.tolist())}: the model is for {window_s:g} s[/]")
    path, manifest = publish_risk(registry_root(state_dir), module, metrics, smoke, cfg, window_s, fp,
                                  {"dataset": str(dataset.resolve()), "train_seeds": seeds,
                                   "heldout_seed_from": heldout_from})
    say(f"wrote {path}; validation ECE {metrics['ece']}, Brier {metrics['brier']} "
        f"(uncalibrated ECE {metrics['uncalibrated']['ece']})")
    if "operating_point" in metrics:
        op = metrics["operating_point"]
        v = op["validation"]
        say(f"operating point (train seeds, out of fold): drain at risk >= {op['drain_above']:g} for "
            f"{op['drain_after']} window(s): recall {v['recall']}, lead p50 {v['lead_s_p50']} s, "
            f"{v['false_drains']} false drain(s) in {v['instance_hours']} instance-hours"
            + ("" if v["within_budget"] else " [yellow](no point within the false-drain budget)[/]"))
    why_not = record_in_clickhouse(ch, manifest, path)
    summary = {"kind": manifest.kind, "version": manifest.version, "path": str(path),
               "model_versions": why_not is None, "metrics": manifest.metrics}
    if not as_json:
        print(f"registered {manifest.kind}@{manifest.version} in {path}")
    print(json.dumps(summary))
    return summary
