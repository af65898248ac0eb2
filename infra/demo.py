"""`foresight demo`: the thin path end to end, each hop shown with what it carried and how long it took."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.core.settings import Settings
from infra.stack.launcher import StackError, up
from infra.thin_path import Hop, end_offsets, send_burst, watch_access, watch_clickhouse, watch_features
from infra.workers import build_weight_controller
from lb_adapters.controller import StepReport


def _hop_line(console: Console, n: int, hop: Hop, summary: str) -> None:
    mark = "[green]ok[/]" if hop.ok else "[red]FAILED[/]"
    console.print(f"[bold]hop {n}[/] {hop.name}: {mark} in {hop.seconds:.2f} s - {summary}")


def run_demo(s: Settings, config: Path | None, console: Console, say: Callable[[str], None]) -> bool:
    t_start = time.monotonic()
    console.rule("Foresight demo: one burst of traffic through every stage")
    try:
        timings = up(s, say, config)
    except StackError as exc:
        console.print(f"[red]stack up failed:[/] {exc}")
        return False
    console.print(f"stack ready in {timings['total']:.1f} s (components started this run: "
                  f"{', '.join(f'{k} {v:.1f}s' for k, v in timings.items() if k != 'total') or 'none'})")

    access_from = end_offsets(s.kafka, s.kafka.topic_access)
    features_from = end_offsets(s.kafka, s.kafka.topic_features)
    burst = send_burst(s, s.demo.burst_requests)
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(burst.statuses.items()))
    console.print(f"[bold]hop 0[/] client -> HAProxy :{s.haproxy.frontend_port}: sent {burst.sent} requests "
                  f"in {burst.seconds:.2f} s (status {codes}), run marker {burst.marker}")

    hops = []
    access = watch_access(s, access_from, burst)
    hops.append(access)
    _hop_line(console, 1, access, f"{access.detail['events']}/{burst.sent} events in {access.detail['records']} "
              f"records, keys {', '.join(access.detail['keys'])}")
    if access.detail["sample"]:
        ev = access.detail["sample"]
        console.print(f"      sample event: {ev['method']} {ev['route']} -> {ev['status']} "
                      f"{ev['latency_ms']} ms on {ev['service']}/{ev['instance']} (id {ev['id']})")

    features = watch_features(s, features_from, burst)
    hops.append(features)
    _hop_line(console, 2, features, f"{len(features.detail['windows'])} windows of {s.streams.window_s} s "
              f"holding {features.detail['requests']} requests (windows close {s.streams.allowed_lateness_s} s "
              "after their end)")
    table = Table("instance", "window start (UTC)", "requests", "p50 ms", "p99 ms", "5xx")
    for w in sorted(features.detail["windows"], key=lambda w: (w["window_start"], w["instance"])):
        table.add_row(w["instance"], time.strftime("%H:%M:%S", time.gmtime(w["window_start"] / 1000)),
                      str(w["requests"]), f"{w['latency_p50_ms']:.1f}", f"{w['latency_p99_ms']:.1f}",
                      str(w["status_5xx"]))
    console.print(table)

    ch = watch_clickhouse(s, burst)
    hops.append(ch)
    _hop_line(console, 3, ch, f"{len(ch.detail['rows'])} rows in {s.clickhouse.database}.features "
              f"holding {ch.detail['requests']} requests")

    t0 = time.monotonic()
    report: StepReport = build_weight_controller(s, "demo").step(s.demo.service)
    adapt = Hop("features -> /v1/weights (Ray Serve) -> policy -> HAProxy runtime API",
                report.response is not None and bool(report.after), time.monotonic() - t0)
    hops.append(adapt)
    if report.response is None:
        _hop_line(console, 4, adapt, report.note)
    else:
        r = report.response
        _hop_line(console, 4, adapt, f"model {r.model}@{r.model_version}")
        table = Table("instance", "p99 ms (features)", "predicted weight", "HAProxy before", "HAProxy after",
                      "decision")
        p99 = {f.instance: f.latency_p99_ms for f in report.features}
        decided = {d.target.split("/", 1)[1]: f"{d.reason} ({d.outcome})" for d in report.decisions}
        for w in r.weights:
            table.add_row(w.instance, f"{p99.get(w.instance, 0):.1f}", str(w.weight),
                          str(report.before.get(w.instance, "-")), str(report.after.get(w.instance, "-")),
                          decided.get(w.instance, "no change needed"))
        console.print(table)
    ok = all(h.ok for h in hops)
    console.rule(f"{'all hops ok' if ok else 'some hops FAILED'} - demo took {time.monotonic() - t_start:.1f} s; "
                 "`foresight stack status` shows the stack, `foresight stack down` stops it")
    return ok
