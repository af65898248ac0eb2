"""`foresight whatif`: counterfactual replay of a service's recorded demand, printed as a table or JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clickhouse_driver import Client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.core.scaling import ScalingKnobs, predictive_knobs, reactive_knobs
from training.autoscale import ScalingSpec
from training.backtest_command import parse_start
from training.progress import err
from training.whatif import Tick, WhatIfConfig, WhatIfResult, whatif


def knobs_for(policy: str, configured: ScalingKnobs | None, overrides: dict[str, Any]) -> ScalingKnobs:
    """The service's configured knobs (or the policy's defaults) with the options given on the command line."""
    base = configured or (reactive_knobs() if policy in ("hpa", "reactive") else predictive_knobs())
    given = {k: v for k, v in overrides.items() if v is not None}
    return ScalingKnobs.model_validate({**base.model_dump(), **given})


@contextmanager
def bars(quiet: bool) -> Iterator[Callable[[str, int], Tick] | None]:
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("minutes"),
                  TimeElapsedColumn(), console=err, transient=False) as progress:

        def new(label: str, total: int) -> Tick:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        yield new


def whatif_command(cl: Client, database: str, models_root: Path, *, service: str, start: str, end: str, policy: str,
                   capacity: float, startup_s: float, knobs: ScalingKnobs, as_json: bool) -> WhatIfResult:
    start_s, end_s = parse_start(start), parse_start(end)
    assert start_s is not None and end_s is not None
    cfg = WhatIfConfig(service=service, start_s=int(start_s), end_s=int(end_s), policy=policy,
                       spec=ScalingSpec(capacity=capacity, startup_s=startup_s), knobs=knobs)
    with bars(as_json) as progress:
        result = whatif(cl, database, cfg, models_root, progress)
    if not as_json:
        print_table(result)
    print(result.model_dump_json())
    return result


def print_table(r: WhatIfResult) -> None:
    console = Console()
    table = Table(title=f"what-if {r.service}, {r.minutes_with_data} minutes with data"
                        + (f", forecasts by {r.forecast_model}" if r.forecast_model else ""))
    for col in ("run", "replica-seconds", "under-provisioned minutes", "under-provisioned %", "actions"):
        table.add_column(col)
    for run in (r.policy, r.recorded):
        if run is not None:
            table.add_row(run.name, f"{run.replica_seconds:.0f}", str(run.underprov_minutes),
                          f"{run.underprov_pct:.3f}", str(run.actions))
    console.print(table)
    if r.replica_seconds_vs_recorded is not None:
        console.print(f"{r.policy.name} would use {r.replica_seconds_vs_recorded} x the recorded replica-seconds")
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}")
