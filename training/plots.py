"""PNG plots of a backtest: forecast bands against the actual rate, replicas per policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.backtest import Backtest
from training.series import RateSeries

PLOT_DAYS = 3


def write_report(bt: Backtest, series: RateSeries, folder: Path, horizon: int = 5) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    n = min(len(bt.test_origins), PLOT_DAYS * 1440)
    origins = bt.test_origins[:n]
    minutes = (origins + horizon - 1 - origins[0]) / 60.0
    fc = bt.test_forecast[:n, horizon - 1, :]
    fig, ax = plt.subplots(figsize=(14, 4.5))
    ax.fill_between(minutes, fc[:, 0], fc[:, -1], color="tab:blue", alpha=0.15, label="p50-p99")
    ax.fill_between(minutes, fc[:, 0], fc[:, 1], color="tab:blue", alpha=0.3, label="p50-p90")
    ax.plot(minutes, series.values[origins + horizon - 1], color="black", lw=0.6, label="actual")
    ax.plot(minutes, fc[:, 0], color="tab:blue", lw=0.8, label="p50")
    ax.set_xlabel("hours into the test range")
    ax.set_ylabel("requests/s (1-minute mean)")
    ax.set_title(f"{horizon}-minute-ahead forecast, first {PLOT_DAYS} days of the test range")
    ax.legend(loc="upper right")
    fig.tight_layout()
    paths = [folder / "forecast.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    auto = bt.result["autoscale"]
    capacity = bt.result["setup"]["capacity"]
    m = min(len(bt.demand), PLOT_DAYS * 1440)
    hours = np.arange(m) / 60.0
    fig, ax = plt.subplots(figsize=(14, 4.5))
    ax.plot(hours, bt.demand[:m] / capacity, color="black", lw=0.6, label="demand / capacity")
    for name, colour in (("oracle", "tab:green"), ("hpa", "tab:red"), ("predictive", "tab:blue")):
        ax.step(hours, bt.replicas[name][:m], where="post", color=colour, lw=0.9,
                label=f"{name} ({auto[name]['underprov_pct']}% under, {auto[name]['replica_seconds']:.0f} replica-s)")
    ax.set_xlabel("hours into the test range")
    ax.set_ylabel("ready replicas")
    ax.set_title(f"replicas per policy, first {PLOT_DAYS} days of the test range")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    paths.append(folder / "replicas.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
