"""The closed-loop demo's HTML report: the summary and three charts (PNG, matplotlib), one folder."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from infra.core.features_table import ServiceWindow
from ingest.replay import ReplaySummary

if TYPE_CHECKING:
    from infra.closed_loop import LoopSummary, Timeline


def _steps(points: list[tuple[float, int]], t0: float, t1: float) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for i, (t, v) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else t1
        xs += [t - t0, end - t0]
        ys += [v, v]
    return xs, ys


def write_report(folder: Path, summary: LoopSummary, tl: Timeline, windows: list[ServiceWindow],
                 traffic: ReplaySummary, capacity: float, t0: float, t1: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fault_t = tl.fault[0] - t0 if tl.fault else None

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([w.start_s - t0 for w in windows], [w.rate for w in windows], label="observed req/s", color="black")
    xs, ys = _steps([(t, r) for t, _, r in tl.pool], t0, t1)
    ax.plot(xs, [y * capacity for y in ys], label="ready capacity (predictive)", color="tab:green")
    xs, ys = _steps(tl.shadow, t0, t1)
    ax.plot(xs, [y * capacity for y in ys], label="capacity the shadow HPA asked for", color="tab:orange",
            linestyle="--")
    if fault_t is not None:
        ax.axvline(fault_t, color="tab:red", linestyle=":", label="leak injected")
    ax.set_xlabel("seconds into the demo")
    ax.set_ylabel("requests per second")
    ax.legend(loc="upper left")
    ax.set_title("Load against capacity")
    fig.tight_layout()
    fig.savefig(folder / "capacity.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    for name, points, style in (("desired (predictive)", tl.desired, "-"), ("shadow HPA", tl.shadow, "--")):
        xs, ys = _steps(points, t0, t1)
        ax.plot(xs, ys, label=name, linestyle=style)
    xs, ys = _steps([(t, r) for t, _, r in tl.pool], t0, t1)
    ax.plot(xs, ys, label="ready", color="tab:green")
    for t, inst, outcome in tl.drains:
        ax.axvline(t - t0, color="tab:purple", linestyle=":", alpha=0.7)
        ax.annotate(f"{outcome.split(':')[0]} {inst}", (t - t0, 0.2), rotation=90, fontsize=7, color="tab:purple")
    ax.set_xlabel("seconds into the demo")
    ax.set_ylabel("instances")
    ax.legend(loc="upper left")
    ax.set_title("Replicas")
    fig.tight_layout()
    fig.savefig(folder / "replicas.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    ok = [(t - t0, ms) for t, ms, failed in traffic.answers if not failed]
    bad = [(t - t0, ms) for t, ms, failed in traffic.answers if failed]
    if ok:
        ax.scatter([t for t, _ in ok], [ms for _, ms in ok], s=2, alpha=0.3, label="answered")
    if bad:
        ax.scatter([t for t, _ in bad], [ms for _, ms in bad], s=6, color="tab:red", label="failed (5xx or no answer)")
    ax.set_yscale("log")
    ax.set_xlabel("seconds into the demo")
    ax.set_ylabel("client latency (ms)")
    ax.legend(loc="upper left")
    ax.set_title("What the clients saw")
    fig.tight_layout()
    fig.savefig(folder / "clients.png", dpi=100)
    plt.close(fig)

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in summary.model_dump().items() if k != "report")
    (folder / "summary.json").write_text(summary.model_dump_json(indent=2))
    (folder / "index.html").write_text(f"""<!doctype html><meta charset="utf-8"><title>Foresight demo</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1000px;margin:20px auto}}th{{text-align:left;padding-right:12px}}
img{{width:100%}}</style>
<h1>Foresight: the closed loop on real traffic</h1>
<p>A slice of the NASA 1995 trace (a morning ramp), replayed time-compressed through HAProxy; the
autoscaler scaled predictively with the reactive HPA-style policy in shadow, the health controller
drained at-risk instances, and one instance was given a leak ending in a crash.</p>
<table>{rows}</table>
<img src="capacity.png" alt="load and capacity"><img src="replicas.png" alt="replicas">
<img src="clients.png" alt="client latency">
""")
    return folder / "index.html"
