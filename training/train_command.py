"""`foresight train`: read a series, train through Ray, write a registry version, mirror it in ClickHouse."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.core.model_registry import ModelManifest, registry_root
from infra.core.settings import ClickHouseSettings
from training.backtest_command import parse_start
from training.fit import TrainConfig
from training.progress import epoch_bar, say
from training.publish import data_fingerprint, publish
from training.ray_job import run_on_ray
from training.series import RateSeries, load_trace

FILE_PREFIX = "file:"
CLICKHOUSE_TABLES = {"clickhouse": "features", "clickhouse:features": "features",
                     "clickhouse:access_events": "access_events"}


def load_source(source: str, service: str, start: str | None, ch: ClickHouseSettings,
                time_range: tuple[int | None, int | None] = (None, None)) -> tuple[RateSeries, dict[str, Any]]:
    """`file:PATH` (a per-second trace), `clickhouse` (the service's feature windows) or
    `clickhouse:access_events` (its raw events), the ClickHouse ones over [start_s, end_s) when given."""
    if source.startswith(FILE_PREFIX):
        path = Path(source[len(FILE_PREFIX) :])
        return load_trace(path, parse_start(start)), {"source": "file", "path": str(path.resolve())}
    if source in CLICKHOUSE_TABLES:
        from infra.core.db import client
        from training.clickhouse_source import load_service

        table = CLICKHOUSE_TABLES[source]
        start_s, end_s = time_range
        cl = client(ch, ch.database)
        try:
            series = load_service(cl, ch.database, service, table=table, start_s=start_s, end_s=end_s)
        finally:
            cl.disconnect()
        return series, {"source": "clickhouse", "database": ch.database, "table": table, "service": service,
                        "from_s": start_s, "to_s": end_s}
    raise ValueError(f"--source must be file:PATH, {' or '.join(CLICKHOUSE_TABLES)}, not {source!r}")


def record_in_clickhouse(ch: ClickHouseSettings, manifest: ModelManifest, path: Path) -> str | None:
    """Write the `model_versions` row; returns why not when ClickHouse cannot be reached."""
    import logging

    from infra.core.db import client
    from training.model_versions import record_version

    driver_log = logging.getLogger("clickhouse_driver")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)  # it logs a traceback per failed connect; one line below says why
    cl = client(ch, ch.database)
    try:
        record_version(cl, ch.database, manifest, path)
        return None
    except Exception as exc:  # the registry folder is the record; ClickHouse is its mirror
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        cl.disconnect()
        driver_log.setLevel(level)


def train_command(*, source: str, service: str, start: str | None, cfg: TrainConfig, val_frac: float,
                  ray_address: str | None, ray_num_cpus: int, state_dir: Path, ch: ClickHouseSettings,
                  workers: int = 0, time_range: tuple[int | None, int | None] = (None, None),
                  as_json: bool = False) -> dict[str, Any]:
    series, description = load_source(source, service, start, ch, time_range)
    how = f"Ray Train, {workers} worker(s)" if workers else "a Ray task"
    say(f"{len(series)} minutes of data ({description['source']}); training as {how} on "
        f"{ray_address or 'a local Ray'}")
    with epoch_bar(cfg.epochs) as on_epoch:
        module, result = run_on_ray(series, cfg, val_frac, ray_address, ray_num_cpus, state_dir, on_epoch, workers)
    fp = data_fingerprint(series, description)
    path, manifest = publish(registry_root(state_dir), module, result["history_len"], cfg, fp, result["metrics"],
                             series, extra_config={"val_frac": val_frac, "data": description, "workers": workers})
    return announce(ch, manifest, path, as_json)


def announce(ch: ClickHouseSettings, manifest: ModelManifest, path: Path, as_json: bool,
             report: Sequence[str] = ()) -> dict[str, Any]:
    """Mirror a written version in `model_versions`, print the report for people and the JSON summary last."""
    say(f"wrote {path}")
    why_not = record_in_clickhouse(ch, manifest, path)
    if why_not:
        say(f"[yellow]model_versions not written (ClickHouse unreachable): {why_not}[/]")
    summary = {"kind": manifest.kind, "version": manifest.version, "path": str(path),
               "model_versions": why_not is None, "metrics": manifest.metrics}
    if not as_json:  # lines for people; scripts read the JSON, always last
        for line in report:
            print(line)
        print(f"registered {manifest.kind}@{manifest.version} in {path}")
    print(json.dumps(summary))
    return summary
