"""`foresight faults record`: a dataset of instances failing, for the risk model and its evaluation.

A private stack (free ports, its own folder) runs a batch of pool services at once, each playing its
own scenario generated from a seed (`health-s<seed>`: 4 instances, one faulty), under an open-loop
Poisson load through HAProxy at a share of the service's capacity. HAProxy's access log goes through
ingest and Kafka to the stream worker (short windows) and the record sink; the faulty instance writes
its ground truth to `fault_events`. After the run the batch is exported under the dataset folder, so
training and evaluation need no stack afterwards:

- `windows-<seeds>.parquet`: one row per instance window (`features`), with the ground truth of its
  service/instance joined in (fault kind, start, failure; none for a healthy instance);
- `requests-<seeds>.parquet`: one row per request HAProxy logged (instance, status, latency), which the
  reactive baselines (consecutive-5xx rules) replay;
- `batch-<seeds>.json`: what ran (seeds, scenarios, load, client lateness, pipeline lag).

Seeds at or above `health.heldout_seed_from` are the held-out set: recorded like the others, marked
`split = heldout` in every row, and refused by training.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from infra.benches.load import LoadResult, percentile, poisson_schedule, run_load
from infra.core.contracts import SERVICE_WIDE
from infra.core.db import client as clickhouse_client
from infra.core.settings import PoolServiceSettings, Settings, load_settings
from infra.pool.faults import FaultKind, dump_scenario, generate

Say = Callable[[str], None]
# What a recording needs: the pool behind HAProxy (registry-sync adds its servers), HAProxy's log into
# ingest -> Kafka -> the stream worker (features) and the record sink (access_events), the exporter scraped.
RECORD_COMPONENTS = {"kafka", "clickhouse", "etcd", "haproxy", "nginx", "pool", "registry-sync", "ingest-syslog",
                     "ingest-scrape", "stream-worker", "record-sink"}
INSTANCES = 4
SERVICE_PREFIX = "health-s"
DEFAULT_KINDS: tuple[FaultKind, ...] = ("leak", "leak", "leak", "slowdown", "capacity_loss", "errors", "hang", "crash")


def service_name(seed: int) -> str:
    return f"{SERVICE_PREFIX}{seed}"


def split_of(seed: int, heldout_from: int) -> str:
    return "heldout" if seed >= heldout_from else "train"


@dataclass(frozen=True)
class RecordPlan:
    seeds: list[int]
    duration_s: float = 240.0
    utilisation: float = 0.65  # of the service's healthy capacity
    capacity_rps: float = 12.0  # per instance
    workers: int = 4
    batch: int = 4  # services recorded at once (8: the load client falls ~1 s behind)
    window_s: int = 2
    load_seed: int = 0
    # The generator draws a kind uniformly from this list: a repeat weighs a kind. Leaks are the one kind with
    # a precursor, so the default records three times as many as of each other kind.
    kinds: tuple[FaultKind, ...] = DEFAULT_KINDS

    def batches(self) -> list[list[int]]:
        return [self.seeds[i:i + self.batch] for i in range(0, len(self.seeds), self.batch)]


def load_summary(result: LoadResult) -> dict[str, Any]:
    """What a recording keeps of its load: counts, statuses, errors and the client's own lag (sent - scheduled),
    which says whether the client (not the servers) fell behind."""
    records = result.records
    lags = [r.lag_ms for r in records if r.error != "overflow"]
    statuses = Counter(r.status for r in records)

    def q(p: float) -> float:
        return round(percentile(lags, p), 1) if lags else 0.0

    return {"scheduled": len(records), "status": {str(k): v for k, v in sorted(statuses.items())},
            "errors": dict(Counter(r.error for r in records if r.error)),
            "lag_ms_p50": q(50), "lag_ms_p99": q(99), "lag_ms_max": round(max(lags, default=0.0), 1)}


def batch_settings(plan: RecordPlan, seeds: Sequence[int], scenario_dir: Path) -> dict[str, Any]:
    """The settings a batch overrides: its pool services (one per seed, a scenario each), short windows."""
    services = []
    for seed in seeds:
        path = scenario_dir / f"{service_name(seed)}.yaml"
        path.write_text(dump_scenario(generate(seed, INSTANCES, plan.duration_s, kinds=plan.kinds)))
        services.append(PoolServiceSettings(
            name=service_name(seed), capacity_rps=plan.capacity_rps, workers=plan.workers, replicas=INSTANCES,
            min_replicas=1, max_replicas=INSTANCES + 4, startup_delay_s=0.5, scenario=path,
        ).model_dump(mode="json", exclude_none=True))
    # Service-wide windows stay at their default; the per-instance ones the risk model reads are short.
    return {"pool": {"services": services}, "streams": {"instance_window_s": plan.window_s}}


@contextlib.contextmanager
def batch_stack(plan: RecordPlan, seeds: Sequence[int], say: Say) -> Iterator[Settings]:
    from infra.chaos import private_config
    from infra.stack.launcher import down, up

    folder = Path(tempfile.mkdtemp(prefix="fs-rec-", dir="/tmp"))
    config = private_config(folder, batch_settings(plan, seeds, folder))
    s = load_settings(config, state_dir=folder)
    try:
        timings = up(s, lambda _: None, config, only=RECORD_COMPONENTS)
        say(f"private stack for {', '.join(map(service_name, seeds))} ready in {timings['total']:.1f} s")
        yield s
    finally:
        down(s, lambda _: None)
        shutil.rmtree(folder, ignore_errors=True)


def wait_ready(s: Settings, services: Sequence[str], timeout_s: float = 60.0) -> None:
    """Every service has all its instances ready in the pool and HAProxy answers through it."""
    deadline = time.monotonic() + timeout_s
    pending = set(services)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = httpx.get(f"http://127.0.0.1:{s.pool.admin_port}/v1/pools/{name}", timeout=3).json()
                svc = s.pool.service(name)
                if status.get("ready", 0) >= INSTANCES and svc is not None and httpx.get(
                        f"http://127.0.0.1:{svc.haproxy_port}/", timeout=3).status_code == 200:
                    pending.discard(name)
        time.sleep(0.5)
    if pending:
        raise TimeoutError(f"not ready after {timeout_s:.0f} s: {', '.join(sorted(pending))}")


def load_all(s: Settings, plan: RecordPlan, seeds: Sequence[int]) -> dict[str, LoadResult]:
    """One open-loop Poisson load per service through its HAProxy frontend, all in one event loop. The timeout
    outlasts HAProxy's `timeout server` (30 s), so a hung instance's requests end as HAProxy's 504s."""
    rate = plan.utilisation * plan.capacity_rps * INSTANCES

    async def all_services() -> list[LoadResult]:
        jobs = []
        for seed in seeds:
            svc = s.pool.service(service_name(seed))
            assert svc is not None
            schedule = poisson_schedule(rate, plan.duration_s, plan.load_seed * 100_003 + seed)
            jobs.append(run_load(f"http://127.0.0.1:{svc.haproxy_port}/work", schedule, timeout_s=40.0,
                                 max_in_flight=2000, rate_rps=rate, seed=seed))
        return list(await asyncio.gather(*jobs))

    return dict(zip(map(service_name, seeds), asyncio.run(all_services()), strict=True))


def wait_flushed(s: Settings, services: Sequence[str], until_s: float, timeout_s: float = 60.0) -> None:
    """Until `features` holds windows of every service that start at or after `until_s` (the worker caught up)."""
    deadline = time.monotonic() + timeout_s
    db = s.clickhouse.database
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            cl = clickhouse_client(s.clickhouse, db)
            try:
                rows = cl.execute(f"SELECT service, max(toUInt32(window_start)) FROM {db}.features "
                                  "WHERE service IN %(s)s GROUP BY service", {"s": tuple(services)})
            finally:
                cl.disconnect()
            if len(rows) == len(services) and all(int(m) >= until_s for _, m in rows):
                return
        time.sleep(1.0)


def export_batch(s: Settings, services: Sequence[str], heldout_from: int) -> tuple[Any, Any]:
    """(windows joined with their instance's ground truth, requests) of `services`, as pandas frames."""
    import pandas as pd

    db = s.clickhouse.database
    cl = clickhouse_client(s.clickhouse, db)
    try:
        cols = [c for (c,) in cl.execute(f"SELECT name FROM system.columns WHERE database = '{db}' "
                                         "AND table = 'features'")]
        select = [f"toUInt32({c})" if c in ("window_start", "window_end") else c for c in cols]
        rows = cl.execute(f"SELECT {', '.join(select)} FROM {db}.features FINAL WHERE service IN %(s)s "
                          "AND instance != %(all)s ORDER BY service, instance, window_start",
                          {"s": tuple(services), "all": SERVICE_WIDE})
        windows = pd.DataFrame(rows, columns=cols)
        truth = pd.DataFrame(cl.execute(
            f"SELECT service, instance, kind, start_ms, failure_ms, seed FROM {db}.fault_events FINAL "
            "WHERE service IN %(s)s", {"s": tuple(services)}),
            columns=["service", "instance", "fault_kind", "fault_start_ms", "failure_ms", "fault_seed"])
        requests = pd.DataFrame(cl.execute(
            f"SELECT ts_ms, service, instance, status, latency_ms FROM {db}.access_events FINAL "
            "WHERE service IN %(s)s AND instance != '' ORDER BY ts_ms", {"s": tuple(services)}),
            columns=["ts_ms", "service", "instance", "status", "latency_ms"])
    finally:
        cl.disconnect()
    truth = truth.sort_values("fault_start_ms").drop_duplicates(["service", "instance"])  # one fault an instance
    windows = windows.merge(truth.drop(columns=["fault_seed"]), on=["service", "instance"], how="left")
    windows["seed"] = windows["service"].str.removeprefix(SERVICE_PREFIX).astype(int)
    windows["split"] = [split_of(int(x), heldout_from) for x in windows["seed"]]
    windows["fault_kind"] = windows["fault_kind"].fillna("")
    windows["window_s"] = windows["window_end"] - windows["window_start"]
    return windows, requests


def pipeline_lag_s(windows: Any) -> dict[str, float]:
    """How long after a window's end the worker emitted it: the stream worker's lag (lateness included)."""
    if windows.empty or "emitted_at" not in windows:
        return {}
    lag = (windows["emitted_at"] / 1000 - windows["window_end"]).clip(lower=0)
    return {"lag_s_p50": round(float(lag.quantile(0.5)), 2), "lag_s_p99": round(float(lag.quantile(0.99)), 2)}


def record_dataset(plan: RecordPlan, out_dir: Path, heldout_from: int, say: Say,
                   progress: Callable[[int], None] = lambda _n: None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = []
    for seeds in plan.batches():
        names = [service_name(seed) for seed in seeds]
        tag = "-".join(map(str, seeds))
        with batch_stack(plan, seeds, say) as s:
            wait_ready(s, names)
            say(f"{', '.join(names)}: load {plan.utilisation:.0%} of {plan.capacity_rps * INSTANCES:g} req/s for "
                f"{plan.duration_s:g} s")
            started = time.time()
            loads = load_all(s, plan, seeds)
            wait_flushed(s, names, time.time() - 2 * plan.window_s - s.streams.allowed_lateness_s)
            time.sleep(2.0)  # the record sink's last batch
            windows, requests = export_batch(s, names, heldout_from)
        windows.to_parquet(out_dir / f"windows-{tag}.parquet", index=False)
        requests.to_parquet(out_dir / f"requests-{tag}.parquet", index=False)
        info = {"seeds": list(seeds), "split": {str(x): split_of(x, heldout_from) for x in seeds},
                "started_s": round(started, 1), "plan": asdict(plan) | {"seeds": list(seeds)},
                "load": {n: load_summary(r) for n, r in loads.items()}, "windows": len(windows),
                "requests": len(requests), "faults": int(windows.drop_duplicates(["service", "instance"])
                                                         ["fault_kind"].ne("").sum()),
                **pipeline_lag_s(windows)}
        (out_dir / f"batch-{tag}.json").write_text(json.dumps(info, indent=2))
        worst = max((load_summary(r)["lag_ms_p99"] for r in loads.values()), default=0)
        say(f"batch {tag}: {len(windows)} windows, {len(requests)} requests, client lateness p99 {worst} ms, "
            f"worker lag p99 {info.get('lag_s_p99')} s")
        batches.append(info)
        progress(len(seeds))
    return {"dataset": str(out_dir), "batches": batches, "seeds": plan.seeds,
            "windows": sum(b["windows"] for b in batches), "requests": sum(b["requests"] for b in batches)}


def load_dataset(folder: Path, split: str | None = None) -> tuple[Any, Any]:
    """(windows, requests) of every batch under `folder`, optionally of one split only."""
    import pandas as pd

    win = [pd.read_parquet(p) for p in sorted(folder.glob("windows-*.parquet"))]
    req = [pd.read_parquet(p) for p in sorted(folder.glob("requests-*.parquet"))]
    if not win:
        raise FileNotFoundError(f"no windows-*.parquet under {folder}: record with `foresight faults record`")
    windows = pd.concat(win, ignore_index=True)
    requests = pd.concat(req, ignore_index=True) if req else pd.DataFrame()
    if split is not None:
        windows = windows[windows["split"] == split]
        if not requests.empty:
            requests = requests[requests["service"].isin(set(windows["service"]))]
    return windows, requests
