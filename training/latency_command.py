"""`foresight train --kind latency`: read per-instance windows from ClickHouse, train, compare, register."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_driver.errors import Error as ClickHouseError

from infra.core.contracts import SERVICE_WIDE
from infra.core.features_table import OPTIONAL_GAUGES
from infra.core.health_features import LATENCY_OUTPUTS
from infra.core.model_registry import HealthSpec, registry_root
from infra.core.settings import ClickHouseSettings
from training.latency import MODEL_NAME, LatencyConfig, LatencyResult, Windows, train_latency
from training.progress import epoch_bar, say
from training.publish import publish_health
from training.registry import fingerprint
from training.train_command import announce


def service_patterns(service: str | None) -> list[str]:
    """`--service a,health-*` as LIKE patterns; none: every service."""
    if not service:
        return ["%"]
    return [s.strip().replace("*", "%") for s in service.split(",") if s.strip()]


def read_windows(ch: ClickHouseSettings, patterns: list[str], time_range: tuple[int | None, int | None]) -> Windows:
    from infra.core.db import client
    from infra.core.features_table import instance_windows

    cl = client(ch, ch.database)
    try:
        return Windows.from_rows(instance_windows(cl, ch.database, patterns, *time_range))
    except (OSError, EOFError, ClickHouseError) as exc:
        raise ValueError(f"cannot read `features` from ClickHouse at {ch.host}:{ch.tcp_port}: "
                         f"{str(exc).splitlines()[0][:200]}") from exc
    finally:
        cl.disconnect()


def _times(ratio: float | None) -> str:
    return "n/a (baseline exact) vs" if ratio is None else f"{ratio:.2f} x"


FILE_PREFIX = "file:"


def read_dataset(folder: Path) -> tuple[Windows, list[str]]:
    """Windows from a fault dataset folder (`windows-*.parquet`, as `foresight faults record` exports them),
    and the services its rows mark `split = heldout` (the held-out seeds)."""
    import pandas as pd  # via statsmodels; only this source needs it

    files = sorted(folder.glob("windows-*.parquet"))
    if not files:
        raise ValueError(f"no windows-*.parquet under {folder}: record a dataset with `foresight faults record`")
    d = pd.concat([pd.read_parquet(f) for f in files]).drop_duplicates(["service", "instance", "window_start"])
    d = d[d["instance"] != SERVICE_WIDE]
    for gauge in OPTIONAL_GAUGES:
        if gauge not in d:
            d[gauge] = 0.0
    rows = list(zip(d["service"], d["instance"], d["window_start"].astype("int64"),
                    (d["window_end"] - d["window_start"]).astype("int64"), d["requests"], d["status_5xx"],
                    d["latency_p50_ms"], d["latency_p99_ms"], *(d[g] for g in OPTIONAL_GAUGES), strict=True))
    held = sorted(set(d.loc[d["split"] == "heldout", "service"])) if "split" in d else []
    return Windows.from_rows(rows), held


def report_lines(result: LatencyResult) -> list[str]:
    held = result.metrics["held_out"]
    lines = [f"held-out pairs: {result.metrics['pairs']['held_out']} ({result.metrics['split']} split)",
             f"{'':16} {'p50 MAE ms':>11} {'p99 MAE ms':>11} {'p99 MAE log':>12}"]
    for name in ("model", "last_value", "inverse_latency"):
        s = held[name]
        lines.append(f"{name:16} {s['p50_mae_ms']:11.2f} {s['p99_mae_ms']:11.2f} {s['p99_mae_log']:12.3f}")
    r = result.metrics["ratios"]
    for out in ("p50", "p99"):
        lines.append(f"{out} MAE: {_times(r[f'{out}_mae_vs_last_value'])} last value, "
                     f"{_times(r[f'{out}_mae_vs_inverse_latency'])} the inverse-latency baseline")
    return lines


def latency_command(*, service: str | None, time_range: tuple[int | None, int | None], cfg: LatencyConfig,
                    state_dir: Path, ch: ClickHouseSettings, as_json: bool = False,
                    windows: Windows | None = None, source: str = "clickhouse") -> dict[str, Any]:
    """Train on ClickHouse `features` (`source` clickhouse) or a fault dataset folder (`file:DIR`)."""
    patterns = service_patterns(service)
    description: dict[str, Any]
    if windows is not None:
        w, description = windows, {"source": "given"}
    elif source.startswith(FILE_PREFIX):
        folder = Path(source[len(FILE_PREFIX):]).resolve()
        w, heldout = read_dataset(folder)
        if heldout and not cfg.holdout_services:  # the dataset's held-out seeds are the held-out part
            cfg = cfg.model_copy(update={"holdout_services": heldout})
        description = {"source": "file", "path": str(folder)}
    elif source in ("clickhouse", "clickhouse:features"):
        w = read_windows(ch, patterns, time_range)
        description = {"source": "clickhouse", "table": "features", "patterns": patterns,
                       "from_s": time_range[0], "to_s": time_range[1]}
    else:
        raise ValueError(f"--source for --kind latency must be clickhouse or file:DIR, not {source!r}")
    services = sorted(set(w.service.tolist()))
    say(f"{len(w)} per-instance windows of {len(services)} service(s) ({description['source']})")
    with epoch_bar(cfg.epochs) as on_epoch:
        result = train_latency(w, cfg, on_epoch)
    description["services"] = services
    data_fp = fingerprint(description, w.start_s.tobytes(), np.nan_to_num(w.latency_p99_ms).tobytes())
    spec = HealthSpec(columns=result.columns, window_s=result.window_s, outputs=list(LATENCY_OUTPUTS))
    path, manifest = publish_health(registry_root(state_dir), "latency", result.module, MODEL_NAME, spec,
                                    {**cfg.model_dump(), "data": description}, data_fp, result.metrics,
                                    result.smoke_x)
    return announce(ch, manifest, path, as_json, report_lines(result))
