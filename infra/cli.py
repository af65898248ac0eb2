"""The `foresight` command line. Every command reads the same settings (see README, Configuration)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from infra.core.settings import ConfigFileError, Settings, load_settings

if TYPE_CHECKING:
    from infra.closed_loop import LoopSummary
    from infra.core.service_registry import Registry, RegistryEntry
    from infra.pool.faults import FaultKind

# Help is Markdown: paragraphs reflow to the terminal, `code` stands out, an indented block stays as written
_typer = functools.partial(typer.Typer, rich_markup_mode="markdown")

app = _typer(
    help="Foresight: a predictive high-availability control plane.\n\n"
    "Start with `foresight doctor`, then `foresight stack up` and `foresight demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = _typer(help="Start, stop and inspect the local stack of real servers.", no_args_is_help=True)
db_app = _typer(help="ClickHouse schema.", no_args_is_help=True)
ingest_app = _typer(help="Ingest sources: files, syslog, HTTP, Prometheus scrape.", no_args_is_help=True)
bench_app = _typer(help="Benchmarks: figures against a baseline measured in the same run.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.add_typer(bench_app, name="bench")

console = Console(width=max(Console().width, 110))
err = Console(stderr=True, width=max(Console().width, 110))


class Ctx:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        try:
            self.settings: Settings = load_settings(config)
        except ConfigFileError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc


def _ctx(ctx: typer.Context) -> Ctx:
    obj: Ctx = ctx.obj
    return obj


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file "
                                                "(default ./foresight.toml if present; env FORESIGHT_CONFIG).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = Ctx(config)


def _say(message: str) -> None:
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


def print_status(settings: Settings, as_json: bool) -> bool:
    from infra.stack.launcher import status

    rows = status(settings)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        table = Table(title=f"Foresight stack ({settings.state})")
        for col in ("component", "state", "pid", "address"):
            table.add_column(col, overflow="fold")
        colours = {"up": "green", "unhealthy": "yellow", "down": "red", "stopped": "dim"}
        for r in rows:
            table.add_row(r.name, f"[{colours[r.state]}]{r.state}[/]", str(r.pid or "-"), r.address)
        console.print(table)
        console.print(f"logs: {settings.state / 'logs'}/<component>.log")
    return all(r.state == "up" for r in rows)


@stack_app.command("up")
def stack_up(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print status as JSON.")] = False
             ) -> None:
    """Start every component on loopback (idempotent) and wait until each answers a real request."""
    from infra.stack.launcher import StackError, up

    c = _ctx(ctx)
    try:
        timings = up(c.settings, _say, c.config)
    except StackError as exc:
        err.print(f"[red]stack up failed:[/] {exc}\n`foresight stack status` shows what runs; "
                  "`foresight stack down` stops it.")
        raise typer.Exit(1) from exc
    _say(f"stack ready in {timings['total']:.1f} s")
    print_status(c.settings, as_json)


@stack_app.command("down")
def stack_down(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print {stopped: [names]}.")
                                                      ] = False) -> None:
    """Stop exactly the processes `stack up` started."""
    from infra.stack.launcher import down

    stopped = down(_ctx(ctx).settings, _say)
    _say(f"stopped {len(stopped)} component(s)" if stopped else "nothing was running")
    if as_json:
        print(json.dumps({"stopped": stopped}))


@stack_app.command("status")
def stack_status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show each component: up, unhealthy (runs, does not answer), down (died) or stopped. Exit 1 unless all up."""
    if not print_status(_ctx(ctx).settings, as_json):
        raise typer.Exit(1)


@app.command()
def doctor(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check binaries, versions, ports and the state folder; say how to fix each problem."""
    from infra.doctor import run_checks

    checks = run_checks(_ctx(ctx).settings)
    if as_json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        table = Table(title="foresight doctor")
        for col in ("check", "", "detail", "fix"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail, c.fix)
        console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command("config")
def config_cmd(
    ctx: typer.Context,
    reference: Annotated[bool, typer.Option("--reference", help="Every setting, its variable and default.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --reference: a JSON list of {setting, env, default, "
                                          "meaning} instead of the Markdown table (the settings are JSON anyway).")
                       ] = False,
) -> None:
    """Print the effective settings as JSON (file + environment + defaults)."""
    if reference:
        from infra.core.config_doc import markdown_table, rows

        if as_json:
            print(json.dumps([dict(zip(("setting", "env", "default", "meaning"), r, strict=True)) for r in rows()]))
        else:
            print(markdown_table())
        return
    print(_ctx(ctx).settings.model_dump_json(indent=2))


@db_app.command("migrate")
def db_migrate(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print {applied: [names]}.")
                                                      ] = False) -> None:
    """Apply the ClickHouse migrations not yet applied (idempotent)."""
    from infra.core.db import migrate

    applied = migrate(_ctx(ctx).settings.clickhouse)
    _say(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    if as_json:
        print(json.dumps({"applied": list(applied)}))


@db_app.command("retain")
def db_retain(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, help="Keep this many whole days; older day partitions are dropped.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {dropped: [{table, partition}]} only.")] = False,
) -> None:
    """Drop day partitions older than N days from every Foresight table (ClickHouse 18.16 has no TTL)."""
    from infra.core.db import retain

    dropped = retain(_ctx(ctx).settings.clickhouse, days)
    if as_json:
        print(json.dumps({"dropped": [{"table": t, "partition": p} for t, p in dropped]}))
        return
    for table, partition in dropped:
        console.print(f"dropped {table} {partition}")
    if not dropped:
        _say("nothing to drop")


@ingest_app.command("syslog")
def ingest_syslog(ctx: typer.Context) -> None:
    """Receive syslog on UDP and TCP (RFC 3164/5424, as HAProxy sends it) into `fs.access`.

    Bad lines go to `fs.dlq` with their reason; while Kafka is down events wait in a disk spool.
    """
    from infra.workers import run_syslog

    run_syslog(_ctx(ctx).settings)


@ingest_app.command("file")
def ingest_file(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Log file (plain, .gz or .bz2).")],
    fmt: Annotated[str, typer.Option("--format", help="auto | clf | combined | haproxy | json")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Parse and count; send nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Last line: {parsed, rejected, reasons}.")] = False,
) -> None:
    """Parse a log file once and send its events (and rejections) to Kafka."""
    from ingest.file_ingest import ingest_file_command

    s = _ctx(ctx).settings
    try:
        summary = ingest_file_command(path, fmt=fmt, ingest=s.ingest, kafka=s.kafka, dry_run=dry_run)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    result = summary.as_dict()
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"{'parsed (dry run)' if dry_run else 'sent'} {result['parsed']} events, "
                      f"rejected {result['rejected']} lines: {result['reasons'] or 'none'}")


@ingest_app.command("tail")
def ingest_tail(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files to follow (rotation and truncation handled).")],
    fmt: Annotated[str, typer.Option("--format", help="auto | clf | combined | haproxy | json")] = "auto",
    from_end: Annotated[bool, typer.Option("--from-end", help="Without a checkpoint, start at the end.")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
) -> None:
    """Follow log files with a durable checkpoint: a restart neither loses nor repeats a line."""
    from infra.workers import run_tail

    run_tail(_ctx(ctx).settings, paths, fmt, from_end, metrics_port)


@ingest_app.command("http")
def ingest_http(ctx: typer.Context) -> None:
    """Serve `POST /v1/logs` and `POST /v1/metrics` (bearer token, size limit, gzip; docs at /docs)."""
    from infra.workers import run_http

    run_http(_ctx(ctx).settings)


@ingest_app.command("scrape")
def ingest_scrape(
    ctx: typer.Context,
    target: Annotated[list[str] | None, typer.Option("--target", help="Prometheus URL (repeatable); "
                                                     "default: settings, else the stack's HAProxy exporter.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
) -> None:
    """Scrape Prometheus endpoints every `ingest.scrape_interval_s` into `fs.metrics`."""
    from infra.workers import run_scrape

    run_scrape(_ctx(ctx).settings, target or [], metrics_port)


@app.command()
def replay(
    ctx: typer.Context,
    trace: Annotated[Path, typer.Option("--trace", help="Requests per second, space-separated (plain/bz2/gz).")],
    speedup: Annotated[float, typer.Option(help="Trace seconds per wall second.")] = 1.0,
    to: Annotated[str, typer.Option(help="http: real requests through HAProxy; kafka: log lines into fs.access.")
                  ] = "http",
    start: Annotated[int, typer.Option(help="Index of the first trace second.")] = 0,
    duration: Annotated[float, typer.Option(help="Stop after this many wall seconds.")] = 60.0,
    max_rps: Annotated[float, typer.Option(help="Cap on requests per wall second.")] = 500.0,
    scale: Annotated[float, typer.Option(help="Multiply each trace second's requests (e.g. 20: NASA's few req/s "
                                              "become a load that needs several instances).")] = 1.0,
    base_url: Annotated[str | None, typer.Option(help="Default: the stack's HAProxy frontend.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replay a real request-rate trace (e.g. NASA 1995) as traffic, bounded in rate and duration."""
    from infra.workers import kafka_sink
    from ingest.replay import replay as run_replay

    s = _ctx(ctx).settings
    if to not in ("http", "kafka"):
        err.print("[red]error:[/] --to must be http or kafka")
        raise typer.Exit(2)
    sink = kafka_sink(s, "replay") if to == "kafka" else None
    try:
        summary = run_replay(trace, speedup=speedup, to=to, start=start,  # type: ignore[arg-type]
                             base_url=base_url or f"http://127.0.0.1:{s.haproxy.frontend_port}", sink=sink,
                             duration_s=duration, max_rps=max_rps, progress=not as_json, scale=scale)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    finally:
        if sink is not None:
            sink.close()
    print(json.dumps(summary.as_dict()) if as_json else summary.as_dict())


@bench_app.command("ingest")
def bench_ingest(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option(help="Replicated NASA sample lines per run.")] = 300_000,
    repeat: Annotated[int, typer.Option(help="Runs of each side; medians are reported.")] = 3,
    sample: Annotated[Path | None, typer.Option(help="Seed log (default: the NASA sample, see FORESIGHT_DATASETS).")
                      ] = None,
    profile: Annotated[Path | None, typer.Option(help="Write a cProfile of one pipeline run here.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ingest throughput against the naive shipper (one raw line per record), same producer settings.

    Needs a broker (`foresight stack up`). Prints {"events_per_s", "raw_producer_per_s", "ratio"} last.
    """
    from infra.core.datasets import NASA_SAMPLE, dataset_path
    from ingest.bench import run_ingest_bench

    s = _ctx(ctx).settings
    result = run_ingest_bench(s.kafka, sample or dataset_path(NASA_SAMPLE), lines, repeat=repeat,
                              batch_max=s.ingest.batch_max, profile_path=profile, say=_say)
    if not as_json:
        console.print(result)
    print(json.dumps({k: result[k] for k in ("events_per_s", "raw_producer_per_s", "ratio")}))


@bench_app.command("serving")
def bench_serving(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Bench a running app (e.g. the stack's serving URL); "
                                            "default: start one on a fresh local Ray head.")] = None,
    instances: Annotated[int, typer.Option(help="Instances per /v1/weights request.")] = 1000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    requests: Annotated[int, typer.Option(help="Measured requests (after the warm-up).")] = 1000,
    warmup: Annotated[int, typer.Option(help="Requests sent first and not measured.")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """/v1/weights latency for 1,000-instance requests against the bare model call, same tensors, same run.

    Prints {"p50_ms", "p99_ms", "rps", "bare_ms", "overhead_ratio"} last (overhead = p99 / bare).
    """
    from serving.bench import run_serving_bench

    s = _ctx(ctx).settings
    result = run_serving_bench(s.serving, s.ray, s.clickhouse, s.state, url, instances=instances,
                               concurrency=concurrency, requests=requests, warmup=warmup, say=_say)
    if not as_json:
        console.print(result.as_dict())
    print(json.dumps(result.summary()))


@bench_app.command("streams")
def bench_streams(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="Backlog of replicated NASA events per run.")] = 600_000,
    repeat: Annotated[int, typer.Option(help="Runs (fresh backlog and worker each); medians are reported.")] = 3,
    instances: Annotated[int, typer.Option(help="Instances (keys) the events are spread over.")] = 8,
    freshness_s: Annotated[float, typer.Option(help="Seconds of events stamped now, for freshness.")] = 30.0,
    sample: Annotated[Path | None, typer.Option(help="Seed log (default: the NASA sample).")] = None,
    profile: Annotated[Path | None, typer.Option(help="py-spy an extra, uncounted run's worker here.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Faust worker throughput against a bare aiokafka consumer (same records, same run), and freshness.

    Needs a broker and ClickHouse (`foresight stack up`); uses its own topics, group and database.
    Prints {"events_per_s", "raw_consumer_per_s", "ratio", "freshness_p99_s"} last.
    """
    from infra.benches.streams import result_json, run_stream_bench, worker_command
    from infra.core.datasets import NASA_SAMPLE, dataset_path

    s = _ctx(ctx).settings
    result = run_stream_bench(s, sample or dataset_path(NASA_SAMPLE), worker_command(), events=events,
                              repeat=repeat, instances=instances, freshness_s=freshness_s, profile=profile,
                              say=_say)
    if not as_json:
        runs = Table(title="foresight bench streams: throughput runs")
        names = list(type(result.runs[0]).model_fields)
        for name in names:
            runs.add_column(name, justify="right")
        for r in result.runs:
            runs.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in r.model_dump().values()))
        console.print(runs)
        console.print({k: v for k, v in result.model_dump().items() if k != "runs"})
    print(result_json(result))


@bench_app.command("registry")
def bench_registry(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(help="Scale 1 -> 1+grow -> 1 cycles (samples = rounds x grow).")] = 2,
    grow: Annotated[int, typer.Option(help="Instances added per cycle.")] = 3,
    burst: Annotated[int, typer.Option(help="Instance keys written at once for the changes/s figure.")] = 200,
    etcd_outage: Annotated[float, typer.Option(help="Also stop etcd this many seconds (e.g. 30) and report "
                                               "whether membership held and how fast the sync caught up.")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Registry -> balancers, on a private rig (own etcd, HAProxy, nginx, pool, sync on free ports).

    Prints {"register_to_routed_p99_s", "nginx_register_to_routed_p99_s", "drain_to_idle_p99_s",
    "changes_per_s"} last. Targets: HAProxy p99 <= 1 s, nginx <= 2 s, >= 50 changes/s.
    """
    import tempfile

    from infra.benches.registry import run_registry_bench

    with tempfile.TemporaryDirectory(prefix="foresight-bench-registry-") as folder:
        result = run_registry_bench(Path(folder), rounds=rounds, grow=grow, burst=burst, etcd_outage_s=etcd_outage,
                                    say=_say)
    if not as_json:
        console.print(result)
    keys = ("register_to_routed_p99_s", "nginx_register_to_routed_p99_s", "drain_to_idle_p99_s", "changes_per_s")
    print(json.dumps({k: result[k] for k in keys}))
@bench_app.command("autoscale")
def bench_autoscale(
    ctx: typer.Context,
    windows: Annotated[int, typer.Option(help="Closed feature windows written, one at a time.")] = 40,
    gap_s: Annotated[float, typer.Option(help="Seconds between two windows.")] = 1.5,
    pool_url: Annotated[str | None, typer.Option(help="A running pool's admin API (default: a stand-in on "
                                                 "loopback that keeps reporting one replica).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """From a closed feature window to the scale action applied, through the real autoscaler loop.

    Needs ClickHouse, Kafka and serving (`foresight stack up`); uses its own database and decision topic.
    Prints {"decision_p99_ms", "feature_to_applied_p99_s"} last.
    """
    from dataclasses import asdict

    from infra.benches.autoscale import result_json, run_autoscale_bench

    s = _ctx(ctx).settings
    result = run_autoscale_bench(s, windows=windows, gap_s=gap_s, pool_url=pool_url, say=_say)
    if not as_json:
        console.print(asdict(result))
    print(result_json(result))


@bench_app.command("lb")
def bench_lb(
    ctx: typer.Context,
    duration: Annotated[float, typer.Option(help="Seconds of load per arm (the issue asks for at least 60).")] = 60.0,
    load: Annotated[float, typer.Option(help="Offered load as a fraction of the healthy total capacity.")] = 0.7,
    workers: Annotated[str, typer.Option(help="Workers of each backend, comma-separated (capacity = workers / "
                                         "mean service time): unequal capacities.")] = "2,4,6,8",
    mean_service: Annotated[float, typer.Option("--mean-service-s", help="Mean service time of one request, "
                                                "the same on every backend.")] = 0.1,
    seed: Annotated[int, typer.Option(help="The load's seed: same seed, same send times in every arm.")] = 1,
    fault_seed: Annotated[int, typer.Option(help="Seed of the generated fault scenario (a held-out seed: never "
                                            "used in training).")] = 9001,
    faults: Annotated[int, typer.Option(help="Faulty backends in the generated scenario.")] = 1,
    scenario: Annotated[Path | None, typer.Option(help="A fault scenario file (YAML) instead of a generated one; "
                                                  "`#k` is the k-th backend.")] = None,
    timeout: Annotated[float, typer.Option("--timeout-s", help="Client timeout: a request unanswered by then is "
                                           "a client-visible error.")] = 5.0,
    interval: Annotated[float, typer.Option("--interval-s", help="Seconds between two rounds of the Foresight "
                                            "control loop.")] = 1.0,
    window: Annotated[float, typer.Option("--window-s", help="Feature window of the control loop.")] = 2.0,
    overhead: Annotated[float, typer.Option("--overhead-s", help="Seconds of the client alone against an instant "
                                            "backend first (0: skip).")] = 10.0,
    arms: Annotated[str, typer.Option(help="Arms to run, comma-separated; add `oracle` for the bound: leastconn "
                                           "with capacity-proportional weights and each faulty instance drained "
                                           "the moment it fails.")] = "roundrobin,leastconn,foresight",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """roundrobin vs leastconn vs Foresight on a private HAProxy 2.6, same load, same faults.

    Each arm starts its own backends (unequal capacities, the pool's backend code) and HAProxy on free
    loopback ports in a temporary folder, never the shared stack. The same open-loop Poisson schedule
    (seed) runs against each, and the same fault scenario is injected at its start. Foresight = leastconn
    with the weights and drains of Foresight's models and policies, applied through the runtime API every
    --interval-s. Takes about 3 x (duration + 10 s) + overhead.

    Prints {"p99_ms": {...}, "error_pct": {...}, "ratio_p99_vs_rr", "ratio_p99_vs_leastconn",
    "ratio_errors_vs_leastconn", ..., "settings"} last. Targets: p99 <= 0.6 x roundrobin and <= 0.9 x
    leastconn; errors <= 0.3 x leastconn's.
    """
    import signal
    import tempfile

    from infra.benches.lb import LbBenchConfig, run_lb_bench

    def stopped(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds: every arm's backends and HAProxy are stopped on the way out

    signal.signal(signal.SIGTERM, stopped)
    try:
        cfg = LbBenchConfig(duration_s=duration, load_fraction=load, mean_service_s=mean_service,
                            workers=tuple(int(w) for w in workers.split(",") if w.strip()), seed=seed,
                            fault_seed=fault_seed, faults=faults, scenario=scenario, timeout_s=timeout,
                            interval_s=interval, window_s=window, overhead_s=overhead,
                            arms=tuple(a.strip() for a in arms.split(",") if a.strip()),
                            state_dir=_ctx(ctx).settings.state)
        with tempfile.TemporaryDirectory(prefix="foresight-bench-lb-") as folder:
            result = run_lb_bench(cfg, Path(folder), say=_say)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if not as_json:
        table = Table(title="foresight bench lb: same load, same faults")
        for col in ("arm", "requests", "p50 ms", "p99 ms", "errors %", "5xx", "timeouts", "conn", "overflow",
                    "client lag p99 ms", "served by"):
            table.add_column(col, justify="left" if col in ("arm", "served by") else "right")
        for arm, p99 in result["p99_ms"].items():
            e = result["errors"][arm]
            table.add_row(arm, f"{result['scheduled'][arm]:,}", f"{result['p50_ms'][arm]:.0f}", f"{p99:.0f}",
                          f"{result['error_pct'][arm]:.2f}", str(e["http_5xx"]), str(e["timeout"]),
                          str(e["connection"]), str(e["overflow"]), f"{result['client']['lag_p99_ms'][arm]:.1f}",
                          " ".join(f"{k}:{v}" for k, v in result["served_by"][arm].items()))
        console.print(table)
        console.print({k: result.get(k) for k in ("ratio_p99_vs_rr", "ratio_p99_vs_leastconn",
                                                  "ratio_errors_vs_leastconn", "targets_met", "models")})
    print(json.dumps(result))


@app.command()
def stream(ctx: typer.Context) -> None:
    """Run a Faust stream worker: `fs.access` + `fs.metrics` -> feature windows -> `fs.features` and ClickHouse."""
    from infra.workers import run_stream_worker

    run_stream_worker(_ctx(ctx).settings)


@app.command()
def record(ctx: typer.Context) -> None:
    """Write the raw record: `fs.access` -> ClickHouse `access_events`, `fs.metrics` -> `metric_samples`.

    Its own consumer group (`record.group_id`); offsets are committed only after ClickHouse took a
    batch, and re-delivered rows collapse under FINAL, so a crash neither loses nor double counts.
    Bad records go to `fs.dlq` with their reason. Metrics on `record.metrics_port`.
    """
    from infra.workers import run_record_sink

    run_record_sink(_ctx(ctx).settings)


def parse_time_ms(text: str, *, option: str, now_s: float | None = None) -> int:
    """`2026-12-05T03:00:00` (UTC unless it says), epoch seconds or ms, or an age: `90s`, `15m`, `2h`, `1d`."""
    from datetime import UTC, datetime

    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    now = time.time() if now_s is None else now_s
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return int((now - float(text[:-1]) * units[text[-1]]) * 1000)
    if text.isdigit():
        value = int(text)
        return value if value >= 100_000_000_000 else value * 1000  # ms, or seconds
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: use an ISO time (2026-12-05T03:00:00, UTC unless it says), epoch "
                                 "seconds or ms, or an age like 15m, 2h, 1d", param_hint=option) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


@app.command()
def verify(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Count events with event time from here: ISO time (UTC unless it "
                                       "says), epoch s/ms, or an age like 15m.")],
    sent: Annotated[int | None, typer.Option(help="Events the replay or ingest run reported sending.")] = None,
    file: Annotated[Path | None, typer.Option(help="Log file that was ingested: its event count is what one run "
                                              "sent.", exists=True, dir_okay=False)] = None,
    copies: Annotated[int, typer.Option(min=1, help="How many times that run was repeated (a double ingest: 2): "
                                        "`sent` counts every copy, `missing` distinct events.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON object only.")] = False,
) -> None:
    """Check the pipeline end to end: what was sent, what sits on `fs.access`, what ClickHouse
    `access_events` and `features` hold since --since.

    Prints {"sent", "in_kafka", "in_access_events", "in_features", "duplicates_dropped", "missing"}
    (plus distinct_in_kafka and whether the stream worker reports duplicates). `missing` > 0 means
    events were lost; exit code 1 then. Run it once the record sink and the stream worker caught up.
    """
    from infra.record_commands import file_event_count, verify_report

    s = _ctx(ctx).settings
    since_ms = parse_time_ms(since, option="--since")
    if file is not None and sent is not None:
        raise typer.BadParameter("give what was sent as --sent N or as --file PATH, not both", param_hint="--sent")
    try:
        distinct = file_event_count(s, file) if file is not None else sent
        total = None if distinct is None else distinct * copies
        report = verify_report(s, since_ms, distinct)
    except (ValueError, TimeoutError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if total is not None:
        report["sent"] = total
    if as_json:
        print(json.dumps(report))
    else:
        table = Table(title=f"foresight verify since {since}")
        for col in ("count", "value"):
            table.add_column(col)
        for k, v in report.items():
            table.add_row(k, str(v))
        console.print(table)
        if not report["duplicates_metric"]:
            console.print("the stream worker reports no duplicates metric: in_features may count duplicates")
    if report["missing"]:
        raise typer.Exit(1)


@app.command()
def decisions(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="Only this service's decisions.")] = None,
    since: Annotated[str, typer.Option(help="From here: ISO time, epoch s/ms, or an age like 15m, 1d.")] = "1d",
    limit: Annotated[int, typer.Option(min=1, help="The newest N decisions at most.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list, one object per decision.")] = False,
) -> None:
    """Explain decisions: each with its reason, the prediction values it rested on (its
    `prediction_refs` resolved in ClickHouse `predictions`) and the feature windows before it
    (the service's `*` windows and its target instance's)."""
    from rich.markup import escape

    from infra.record_commands import decisions_report

    s = _ctx(ctx).settings
    rows = decisions_report(s, parse_time_ms(since, option="--since"), service, limit)
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        _say("no decisions in that range")
        return
    for d in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["ts_ms"] / 1000))
        outcome = escape(f"[{d['outcome']}{', dry run' if d['dry_run'] and d['outcome'] != 'dry_run' else ''}]")
        console.print(f"[bold]{when}[/] " + escape(f"{d['service']} {d['actuator']} {d['target']} {d['action']} "
                                                   f"{d['before']} -> {d['after']} ") + outcome)
        console.print("  reason: " + escape(d["reason"]))
        for p in d["predictions"]:
            values = ", ".join(f"h{v['horizon_s']}s q{v['quantile']}: {v['value']:.3g}" for v in p["values"])
            console.print("  prediction " + escape(f"{p['ref']}: {values or 'not found in predictions'}"))
        for w in d["features"][-4:]:
            console.print(f"  window {time.strftime('%H:%M:%S', time.gmtime(w['window_start']))} {w['instance']}: "
                          f"{w['requests']} req, p99 {w['latency_p99_ms']:.1f} ms, 5xx {w['status_5xx']}")


@app.command()
def serve(
    ctx: typer.Context,
    ray_address: Annotated[str | None, typer.Option(help="ray://host:port of a cluster; default starts local Ray.")
                           ] = None,
) -> None:
    """Deploy the serving API (Ray Serve + FastAPI) and block until stopped."""
    from serving.runner import run

    s = _ctx(ctx).settings
    ray_settings = s.ray.model_copy(update={"address": ray_address}) if ray_address else s.ray
    run(s.serving, ray_settings, s.state, s.clickhouse)


@app.command()
def adapt(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="Service to weigh (default: the demo service).")] = None,
    once: Annotated[bool, typer.Option("--once", help="One decision round, then exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between rounds.")] = 10.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and record, do not touch HAProxy.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decisions as JSON lines (as `autoscale`).")
                       ] = False,
) -> None:
    """Run the weight adapter: latest features -> /v1/weights -> policy -> HAProxy runtime API.

    Only the copy that holds the service's leadership in etcd (`<prefix>/leaders/<service>/weights`) changes
    weights; another copy stands by and takes over within registry.leader_ttl_s when the leader dies.
    `--dry-run` changes nothing and needs no leadership."""
    import os
    import socket

    from infra.core.service_registry import Leadership
    from infra.workers import build_weight_controller

    s = _ctx(ctx).settings
    if dry_run:
        s = s.model_copy(update={"adapter": s.adapter.model_copy(update={"dry_run": True})})
    controller = build_weight_controller(s)
    target = service or s.demo.service
    if not once:
        from prometheus_client import start_http_server

        start_http_server(s.adapter.metrics_port, addr="127.0.0.1")
    from lb_adapters.metrics import LEADER, ROUNDS

    leadership = None if dry_run else Leadership(_registry(s), target, f"adapt@{socket.gethostname()}:{os.getpid()}",
                                                 ttl_s=s.registry.leader_ttl_s, role="weights")
    try:
        while True:
            # --once waits one lease TTL for a dead leader's key to expire; the loop re-checks every round
            if leadership is not None and not leadership.acquire(timeout=s.registry.leader_ttl_s + 1 if once else 0):
                LEADER.labels(target).set(0)
                ROUNDS.labels("standby").inc()
                _say(f"standing by: another copy leads {target} ({leadership.current_holder_text()})")
                if once:
                    return
                time.sleep(interval)
                continue
            LEADER.labels(target).set(1 if leadership is not None else 0)
            try:
                report = controller.step(target)
            except Exception as exc:  # one failed round (serving or ClickHouse away) must not end the loop
                ROUNDS.labels("failed").inc()
                _say(f"[red]round failed:[/] {exc}")
                if once:
                    raise typer.Exit(1) from exc
            else:
                ROUNDS.labels("ok").inc()
                for d in report.decisions:
                    if as_json:
                        print(d.model_dump_json(), flush=True)
                    else:
                        _say(f"{d.target}: weight {d.before} -> {d.after} ({d.reason}; {d.outcome})")
                if report.note:
                    _say(report.note)
            if once:
                if leadership is not None:
                    leadership.resign()
                return
            time.sleep(interval)
    finally:
        close = getattr(controller.sink, "close", None)
        if close is not None:
            pending = getattr(controller.sink, "pending", 0)
            close()  # what Kafka or ClickHouse did not take stays spooled for the next start
            if pending:
                _say(f"{pending} decision record(s) stay spooled in {s.decision_spool_dir}; the next run replays them")


@app.command()
def health(
    ctx: typer.Context,
    service: Annotated[list[str] | None, typer.Option(help="Service(s) to watch (default: health.services).")
                       ] = None,
    once: Annotated[bool, typer.Option("--once", help="One round per service, then exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and record, do not touch the registry.")
                       ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: one JSON object per service.")] = False,
) -> None:
    """Drain instances before they fail, and re-admit them once healthy: risk from /v1/risk (a served
    model, else the peer-deviation baseline) -> drain policy with its guardrails (hysteresis, at most
    health.max_drained_fraction out, never the last ready instance, never undoing an operator's
    state) -> the instance's state in the registry, which the balancer sync applies to HAProxy and nginx.

    Example: `foresight health --service web --once --dry-run --json` shows what it would do now.
    """
    from infra.workers import build_health_controller

    s = _ctx(ctx).settings
    if dry_run:
        s = s.model_copy(update={"health": s.health.model_copy(update={"dry_run": True})})
    services = service or s.health.services
    if not services:
        err.print("[red]error:[/] no service to watch: pass --service NAME or set health.services")
        raise typer.Exit(2)
    controller = build_health_controller(s)
    if not once:
        from prometheus_client import start_http_server

        start_http_server(s.health.metrics_port, addr="127.0.0.1")
    while True:
        for name in services:
            try:
                report = controller.step(name)
            except Exception as exc:
                _say(f"[red]{name}: round failed:[/] {exc}")
                if once:
                    raise typer.Exit(1) from exc
                continue
            if once and as_json:
                print(json.dumps({"service": name, "model": report.model, "risk": report.risk, "note": report.note,
                                  "decisions": [d.model_dump() for d in report.decisions]}))
                continue
            for d in report.decisions:
                _say(f"{d.target}: {d.action} ({d.reason}; {d.outcome})")
            if report.note:
                _say(f"{name}: {report.note}")
        if once:
            return
        time.sleep(s.health.interval_s)


AUTOSCALE_EXAMPLE = """[[autoscaler.services]]
name = "api"
capacity_rps = 20
startup_s = 20
scaler = { kind = "pool", url = "http://127.0.0.1:19110" }"""


@app.command()
def autoscale(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="Only this service of autoscaler.services.")] = None,
    once: Annotated[bool, typer.Option("--once", help="One decision round per service, then exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and record, do not touch the scalers.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: print the decisions as JSON lines.")] = False,
) -> None:
    """Scale replicas ahead of load: features -> /v1/forecast -> replica policy -> guardrails -> scaler.

    Each service in `autoscaler.services` names its scaler (the local pool, a Ray Serve deployment, a
    Kubernetes Deployment), its policy (predictive, reactive, static:N), capacity and startup. A round
    runs when a new feature window closes and at least every `autoscaler.interval_s`; every decision
    goes to fs.decisions with its reason and the forecast it used. When predictions are stale or
    serving is down the reactive policy decides ("fallback" in the reason); when ClickHouse is down
    nothing changes. Only the copy holding a service's leadership in etcd
    (`<prefix>/leaders/<service>/replicas`) scales it; another stands by (`--dry-run` needs none).
    Example foresight.toml:

        [[autoscaler.services]]
        name = "api"
        capacity_rps = 20
        startup_s = 20
        scaler = { kind = "pool", url = "http://127.0.0.1:19110" }
    """
    import os
    import signal
    import socket
    import threading

    from rich.markup import escape

    from infra.core.service_registry import Leadership
    from infra.workers import build_autoscaler

    s = _ctx(ctx).settings
    if dry_run:
        s = s.model_copy(update={"autoscaler": s.autoscaler.model_copy(update={"dry_run": True})})
    if once and not s.autoscaler.services:
        err.print("[red]error:[/] no services to scale: add an \\[\\[autoscaler.services]] table to "
                  f"foresight.toml, e.g.\n{escape(AUTOSCALE_EXAMPLE)}")
        raise typer.Exit(2)
    try:
        scaler = build_autoscaler(s, service)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    leaderships: dict[str, Leadership] = {}
    if not dry_run:  # one copy acts per service (etcd `<prefix>/leaders/<service>/replicas`); a dry run needs none
        holder = f"autoscale@{socket.gethostname()}:{os.getpid()}"
        leaderships = {name: Leadership(_registry(s), name, holder, ttl_s=s.registry.leader_ttl_s, role="replicas")
                       for name in scaler.services}
        # --once waits one lease TTL for a dead leader's key to expire; the loop re-checks every round
        wait_s = s.registry.leader_ttl_s + 1 if once else 0
        scaler.is_leader = lambda name: leaderships[name].acquire(timeout=wait_s)

    def say(report: object) -> None:
        from lb_adapters.autoscaler import RoundReport

        assert isinstance(report, RoundReport)
        d = report.decision
        if as_json and d is not None:
            print(d.model_dump_json())
        elif d is not None:
            _say(f"{d.service}: {d.before} -> {d.after} replicas [{d.outcome}] {d.reason}")
        elif report.note:
            _say(f"{report.service}: {report.note}")

    if once:
        failed = False
        for name in scaler.services:
            try:
                say(scaler.step(name))
            except Exception as exc:  # one service's failure must not hide the others' rounds
                failed = True
                err.print(f"[red]{name}: round failed:[/] {exc}")
        for leadership in leaderships.values():
            leadership.resign()
        raise typer.Exit(1 if failed else 0)
    from prometheus_client import start_http_server

    start_http_server(s.autoscaler.metrics_port, addr="127.0.0.1")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if not scaler.services:
        _say("no services to scale (autoscaler.services is empty); idle, serving metrics. Example:\n"
             + escape(AUTOSCALE_EXAMPLE))
    _say(f"autoscaling {', '.join(scaler.services) or 'nothing'} (metrics :{s.autoscaler.metrics_port})")
    try:
        scaler.run(stop, on_round=say)
    finally:
        for leadership in leaderships.values():
            leadership.resign()


@app.command()
def whatif(
    ctx: typer.Context,
    service: Annotated[str, typer.Option(help="Service whose recorded demand (ClickHouse `features`) is replayed.")],
    from_: Annotated[str, typer.Option("--from", help="Range start, ISO 8601 (UTC when no offset), "
                                                      "e.g. 2026-12-05T03:00.")],
    to: Annotated[str, typer.Option(help="Range end, ISO 8601, exclusive.")],
    policy: Annotated[str, typer.Option(help="predictive | hpa | static:N")] = "predictive",
    capacity: Annotated[float | None, typer.Option(help="Requests/s one replica serves; default: the service's "
                                                        "`autoscaler.services` entry.")] = None,
    startup: Annotated[float | None, typer.Option(help="Seconds a new replica takes to become ready; default: "
                                                       "the service's entry.")] = None,
    headroom: Annotated[float | None, typer.Option(help="Predictive: extra share over the forecast quantile.")] = None,
    quantile: Annotated[float | None, typer.Option(help="Predictive: forecast quantile to provision for.")] = None,
    target_utilization: Annotated[float | None, typer.Option(help="HPA: target share of capacity.")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="Fewest replicas.")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Most replicas.")] = None,
    feedback_gain: Annotated[float | None, typer.Option(help="Online headroom feedback gain (0: off).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Only the JSON result on stdout, no bars.")] = False,
) -> None:
    """Counterfactual replay: what a policy would have done with a service's recorded demand.

    Reads the service's per-minute demand from ClickHouse `features`, runs it through the autoscaling
    simulator with --policy (the same code and guardrails the live autoscaler runs; predictive forecasts
    each minute with the newest registered forecast model), and compares replica-seconds and
    under-provisioned minutes (demand above ready replicas x capacity) with what the controller actually
    did: its scaler decisions in ClickHouse `decisions` over the same range, replayed with the same startup
    delay. Run it before turning a policy on. Prints a table, then the JSON result as the last line.
    """
    from clickhouse_driver.errors import Error as ClickHouseError

    from infra.core.db import client
    from infra.core.model_registry import registry_root
    from training.whatif_command import knobs_for, whatif_command

    s = _ctx(ctx).settings
    configured = next((x for x in getattr(getattr(s, "autoscaler", None), "services", []) if x.name == service),
                      None)
    cap = capacity if capacity is not None else getattr(configured, "capacity_rps", None)
    start_s = startup if startup is not None else getattr(configured, "startup_s", None)
    if cap is None or start_s is None:
        err.print(f"[red]error:[/] service {service!r} is not in autoscaler.services: pass --capacity and --startup")
        raise typer.Exit(2)
    own = None if configured is None else (configured.reactive if policy in ("hpa", "reactive") else configured.knobs)
    try:
        knobs = knobs_for(policy, own, {"headroom": headroom, "quantile": quantile, "target_utilization":
                                        target_utilization, "min_replicas": min_replicas,
                                        "max_replicas": max_replicas, "feedback_gain": feedback_gain})
        cl = client(s.clickhouse, s.clickhouse.database)
        try:
            whatif_command(cl, s.clickhouse.database, registry_root(s.state), service=service, start=from_, end=to,
                           policy=policy, capacity=cap, startup_s=start_s, knobs=knobs, as_json=as_json)
        finally:
            cl.disconnect()
    except ValueError as exc:  # a bad range, policy, quantile or no data: say which, no traceback
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    except ClickHouseError as exc:
        err.print(f"[red]error:[/] ClickHouse at {s.clickhouse.host}:{s.clickhouse.tcp_port}: {exc}; "
                  "is the stack up (`foresight stack status`)?")
        raise typer.Exit(1) from exc


@app.command("keda-scaler")
def keda_scaler(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="gRPC port (default keda.port).")] = None,
) -> None:
    """KEDA external scaler (gRPC `externalscaler.ExternalScaler`): HPA scales on the forecast.

    A ScaledObject trigger `type: external` with metadata `scalerAddress: <host>:<port>`,
    `service: <name>`, `targetPerReplica: <req/s per replica>` (optional `startupSeconds`,
    `intervalSeconds`, `quantile`, `activationValue`) gets the p90 forecast peak over startup +
    interval; stale predictions fall back to observed load (logged, `foresight_keda_fallbacks`).
    TLS: keda.tls_cert_file + keda.tls_key_file (+ keda.tls_client_ca_file for client certificates).
    """
    import signal
    import threading

    from prometheus_client import start_http_server

    from infra.workers import build_keda_scaler

    s = _ctx(ctx).settings
    if port is not None:
        s = s.model_copy(update={"keda": s.keda.model_copy(update={"port": port})})
    try:
        server, bound = build_keda_scaler(s)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    start_http_server(s.keda.metrics_port, addr=s.keda.host)
    server.start()
    _say(f"KEDA external scaler on {s.keda.host}:{bound} ({'TLS' if s.keda.tls_cert_file else 'plaintext'}), "
         f"forecasts from {s.serving_url}, metrics on :{s.keda.metrics_port}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()


@app.command()
def chaos(
    ctx: typer.Context,
    fault: Annotated[list[str] | None, typer.Option(
        "--fault", help="Component to crash (repeatable), in turn; default stream-worker, clickhouse, serving, "
                        "autoscaler, registry-sync, pool-instance (one ready instance of a pool service, which "
                        "the pool replaces), etcd.")] = None,
    rate: Annotated[float, typer.Option(help="Events per second of the replay during each fault.")] = 40.0,
    down_s: Annotated[float, typer.Option(help="Seconds each component stays down.")] = 5.0,
    after_s: Annotated[float, typer.Option(help="Seconds of replay after the restart.")] = 10.0,
    settle_s: Annotated[float, typer.Option(help="Longest wait for the stream worker to drain.")] = 90.0,
    this_stack: Annotated[bool, typer.Option("--this-stack", help="Crash the configured stack's components "
                                             "instead of a private stack on free ports.")] = False,
    with_controllers: Annotated[bool, typer.Option("--controllers/--no-controllers", help="Run the weight "
                                                   "controller (with serving, HAProxy, backends) under a demo "
                                                   "load during the faults.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Only the JSON result on stdout.")] = False,
) -> None:
    """Crash components one at a time under a bounded replay; report events lost, windows double-counted,
    unsafe actuator actions and time to recover (targets: 0, 0, 0). Exit 1 when a target is missed.

    Runs on a private stack it starts and stops (free ports, temp folder) unless --this-stack.
    """
    from infra.chaos import DEFAULT_FAULTS, run_chaos
    from infra.chaos import as_json as chaos_json

    results = run_chaos(_ctx(ctx).settings, fault or DEFAULT_FAULTS, rate, down_s, after_s, settle_s, _say,
                        this_stack=this_stack, with_controllers=with_controllers)
    summary = chaos_json(results)
    if as_json:
        print(json.dumps(summary))
    else:
        table = Table(title="foresight chaos")
        for col in ("component", "sent", "lost", "double-counted", "unsafe", "recover s", "flowing s"):
            table.add_column(col)
        for r in results:
            table.add_row(r.component, str(r.sent), str(r.lost), str(r.double_counted_windows), str(r.unsafe_actions),
                          f"{r.recover_s:.1f}", "-" if r.flowing_s is None else f"{r.flowing_s:.1f}")
        console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def backtest(
    trace: Annotated[Path, typer.Option(help="Per-second request counts, space-separated (plain, .bz2, .gz).",
                                        exists=True, dir_okay=False)],
    test_from: Annotated[int | None, typer.Option(help="Trace index (second) where the test range starts; "
                                                  "default: the last 25%.")] = None,
    val_from: Annotated[int | None, typer.Option(help="Trace index where validation starts; default: the 15% "
                                                 "of the trace before the test range.")] = None,
    scale: Annotated[float, typer.Option(help="Multiply the trace's rate by this for the autoscaling runs.")] = 1.0,
    capacity: Annotated[float, typer.Option(help="Requests/s one replica serves.")] = 20.0,
    startup: Annotated[float, typer.Option(help="Seconds a new replica takes to become ready.")] = 120.0,
    slo: Annotated[float, typer.Option(help="Most under-provisioned minutes (%) a tuned policy may have.")] = 0.5,
    start: Annotated[str | None, typer.Option(help="ISO time of the trace's first second (enables calendar "
                                              "features); the NASA trace's is known.")] = None,
    report: Annotated[Path | None, typer.Option(help="Folder to write PNG plots into.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the forecaster.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the forecaster's training.")] = 0,
    threads: Annotated[int, typer.Option(help="Torch CPU threads.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Only the JSON result on stdout.")] = False,
    refit: Annotated[bool, typer.Option("--refit/--no-refit", help="Retrain the forecaster on train + validation "
                                        "for the epoch count validation chose before scoring it on the test "
                                        "range (--no-refit: score the validation-phase model).")] = True,
    feedback_gain: Annotated[float | None, typer.Option(help="Online headroom feedback of both policies: after "
                                                        "each minute the correction moves by gain x (missed - SLO), "
                                                        "so the realised SLO converges to the target; 0: off. "
                                                        "Default: the backtest's.")] = None,
    breakdown: Annotated[bool, typer.Option("--breakdown/--no-breakdown", help="Split predictive's replica-seconds "
                                            "above the oracle's into burst noise (the allocation floor), "
                                            "forecaster, startup lead and scale-down guardrails; it tunes two "
                                            "more variants, about doubling the simulation time.")] = True,
) -> None:
    """Train on the past of a trace, then score forecaster, baselines and autoscaling policies on its test range.

    Prints the JSON result as the last line of stdout; progress goes to stderr.
    """
    from training.backtest_command import backtest_command

    try:
        backtest_command(trace, test_from=test_from, val_from=val_from, scale=scale, capacity=capacity,
                         startup_s=startup, slo_pct=slo, start=start, report=report, epochs=epochs, seed=seed,
                         threads=threads, as_json=as_json, refit=refit,
                         feedback_gain=feedback_gain, breakdown=breakdown)
    except ValueError as exc:  # a trace too short or splits out of order: say which, no traceback
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def train(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(help="`forecast` (a service's request rate, on Ray), `latency` "
                                      "(each instance's next-window p50/p99 from its per-instance windows in "
                                      "ClickHouse, compared on a held-out part with last-value and the "
                                      "inverse-latency baseline) or `risk` (the instance-failure classifier, "
                                      "from a `foresight faults record` dataset's TRAIN seeds).")] = "forecast",
    dataset: Annotated[Path | None, typer.Option(help="--kind risk: the dataset folder (default "
                                                 "`<state>/datasets/risk`); only its TRAIN seeds are read.")] = None,
    source: Annotated[str, typer.Option(help="`file:PATH` (per-second trace), `clickhouse` (feature windows "
                                        "of --service) or `clickhouse:access_events` (its raw events). "
                                        "--kind latency: `clickhouse` or `file:DIR`, a fault dataset folder "
                                        "(`foresight faults record`; its held-out seeds are held out).")
                      ] = "clickhouse",
    from_: Annotated[str | None, typer.Option("--from", help="ClickHouse sources: first time to read (ISO, UTC "
                                              "unless it says, epoch s/ms, or an age like 7d).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="ClickHouse sources: read up to here (exclusive).")
                  ] = None,
    service: Annotated[str | None, typer.Option(help="Service to read from ClickHouse (default: the demo "
                                                "service). --kind latency: services, comma-separated, `*` "
                                                "matches any text (e.g. `health-*`); default: all.")] = None,
    start: Annotated[str | None, typer.Option(help="ISO time of a trace file's first second.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 8 for forecast, 40 for latency, "
                                               "60 for risk).")
                      ] = None,
    members: Annotated[int, typer.Option(help="MLPs trained side by side and averaged.")] = 1,
    hidden: Annotated[int | None, typer.Option(help="Width of each MLP's hidden layers (default 256 for "
                                               "forecast, 64 for latency, 32 for risk).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    val_frac: Annotated[float, typer.Option(help="Tail of the data held out for epoch choice and metrics.")] = 0.15,
    ray_address: Annotated[str | None, typer.Option(help="ray://host:port of a cluster; default: the configured "
                                                    "ray.address, else a local Ray.")] = None,
    workers: Annotated[int, typer.Option(help="0: one Ray task; N: Ray Train's TorchTrainer with N data-parallel "
                                         "workers.")] = 0,
    split: Annotated[str, typer.Option(help="--kind latency: the held-out part, never used for tuning: `time` "
                                       "(the latest windows) or `service` (the last services by name, e.g. "
                                       "held-out seeds).")] = "time",
    holdout_frac: Annotated[float, typer.Option(help="--kind latency: share of the data held out.")] = 0.2,
    holdout_services: Annotated[str | None, typer.Option(help="--kind latency: the held-out part is these "
                                                         "services (comma-separated globs, e.g. `health-s9*` "
                                                         "for held-out fault seeds), never trained on.")
                                ] = None,
    min_requests: Annotated[int, typer.Option(help="--kind latency: leave out target windows with fewer "
                                              "requests (their p99 is noise).")] = 5,
    window_s: Annotated[float | None, typer.Option(help="--kind latency: window length to train on (default: "
                                                   "the most common in the data).")] = None,
    false_drain_budget: Annotated[float, typer.Option(help="--kind risk: false drains per instance-hour the drain "
                                                      "operating point may cost on the train seeds' out-of-fold "
                                                      "scores; within it, the best recall, then lead, wins.")] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="Only the JSON summary on stdout (it is always the last "
                                          "line); progress stays on stderr.")] = False,
) -> None:
    """Train a model and write it to the model registry (and ClickHouse `model_versions`).

    `--kind forecast` trains a service's rate forecaster on Ray. `--kind latency` trains the per-instance
    latency model on ClickHouse `features` (window t with the next window's load -> its p50/p99), prints
    its held-out MAE beside last-value and the inverse-latency baseline, and registers it; serving's
    `/v1/weights` then answers from it. `--kind risk` trains the failure classifier on a `foresight faults
    record` dataset's TRAIN seeds (held-out ones are refused), calibrates it on out-of-fold scores of
    them (ECE, Brier printed), chooses the drain operating point (threshold, consecutive risky windows) by
    replaying the drain policy on those out-of-fold scores (`--false-drain-budget`), stores it in the
    manifest and registers it; `/v1/risk` then answers from it. Evaluate it with `foresight evaluate risk`.

    Progress (notes and an epoch bar) goes to stderr; {kind, version, path, model_versions, metrics} is
    the last line of stdout."""
    from training.fit import TrainConfig
    from training.train_command import train_command

    if kind not in ("forecast", "latency", "risk"):
        raise typer.BadParameter("--kind must be forecast, latency or risk", param_hint="--kind")
    if split not in ("time", "service"):
        raise typer.BadParameter("--split must be time or service", param_hint="--split")
    s = _ctx(ctx).settings
    if kind == "risk":
        from infra.risk_eval import TARGETS
        from infra.risk_tuning import operating_point
        from lb_adapters.policies.drain import health_knobs
        from training.risk_command import train_risk_command

        def choose(oof: Any) -> dict[str, Any]:
            return operating_point(oof, health_knobs(s.health, s.streams.window_s), s.health.horizon_s,
                                   s.streams.allowed_lateness_s, false_drain_budget, TARGETS["lead_s_p50"])

        try:
            train_risk_command(dataset or s.state / "datasets" / "risk", s.state, s.clickhouse,
                               horizon_s=s.health.horizon_s, heldout_from=s.health.heldout_seed_from,
                               epochs=epochs or 60, hidden=hidden or 32, seed=seed, as_json=as_json,
                               operating_point=choose)
        except (ValueError, FileNotFoundError) as exc:  # held-out seeds, no dataset, no positive window
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        return
    try:
        start_s = parse_time_ms(from_, option="--from") // 1000 if from_ else None
        end_s = parse_time_ms(to, option="--to") // 1000 if to else None
        if kind == "latency":
            from training.latency import LatencyConfig
            from training.latency_command import latency_command

            cfg = LatencyConfig(epochs=epochs or 40, hidden=hidden or 64, seed=seed, split=split,
                                holdout_frac=holdout_frac, min_requests=min_requests, window_s=window_s,
                                holdout_services=[p.strip() for p in (holdout_services or "").split(",") if p.strip()])
            latency_command(service=service, time_range=(start_s, end_s), cfg=cfg, state_dir=s.state,
                            ch=s.clickhouse, as_json=as_json, source=source)
            return
        train_command(source=source, service=service or s.demo.service, start=start, time_range=(start_s, end_s),
                      cfg=TrainConfig(epochs=epochs or 8, members=members, hidden=hidden or 256, seed=seed),
                      val_frac=val_frac, ray_address=ray_address or s.ray.address, ray_num_cpus=s.ray.num_cpus,
                      state_dir=s.state, ch=s.clickhouse, workers=workers, as_json=as_json)
    except ValueError as exc:  # no data for the service, too little history, a bad --source
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


evaluate_app = _typer(help="Evaluate trained models on held-out data against the baselines.",
                           no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("risk")
def evaluate_risk(
    ctx: typer.Context,
    dataset: Annotated[Path | None, typer.Option(help="Dataset folder (default `<state>/datasets/risk`); only its "
                                                 "HELD-OUT seeds are evaluated on.")] = None,
    version: Annotated[str | None, typer.Option(help="Risk model version (default: the newest).")] = None,
    error_limit: Annotated[int, typer.Option(help="HAProxy `error-limit` (consecutive errors before mark-down; "
                                             "HAProxy's default 10).")] = 10,
    envoy_consecutive: Annotated[int, typer.Option(help="Envoy `consecutive_5xx`.")] = 5,
    at: Annotated[str, typer.Option(help="The model's drain operating point: `model` (the threshold and consecutive "
                                    "windows chosen at training on the train seeds, from the manifest; the "
                                    "settings' when it has none) or `settings` (health.drain_above, "
                                    "health.drain_after).")] = "model",
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report last.")] = False,
) -> None:
    """Risk model vs reactive baselines on the held-out recordings: precision, recall (an alarm within H before
    the failure), lead time p50 and false drains per instance-hour, overall and per fault kind,
    for the model (through the drain policy, health.drain_above and its guardrails), the peer-deviation
    baseline, HAProxy `observe layer7` + `error-limit` + active checks, and Envoy's consecutive-5xx ejection.
    """
    from infra.risk_eval import evaluate_command

    if at not in ("model", "settings"):
        raise typer.BadParameter("--at must be model or settings", param_hint="--at")
    s = _ctx(ctx).settings
    try:
        report = evaluate_command(s, dataset or s.state / "datasets" / "risk", version, error_limit,
                                  envoy_consecutive, at=at)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if not as_json:
        table = Table(title="risk on the held-out seeds")
        for col in ("detector", "recall", "precision", "lead p50 s", "false drains / inst-h", "leak recall"):
            table.add_column(col)
        for name, m in report["detectors"].items():
            a, leak = m["all"], m.get("leak", {})
            table.add_row(name, str(a["recall"]), str(a["precision"]), str(a["lead_s_p50"]),
                          str(a["false_drains_per_instance_hour"]), str(leak.get("recall")))
        console.print(table)
    print(json.dumps(report))


@app.command()
def demo(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option("--quick", help="Only the 30-second thin path: one burst through every "
                                                       "stage, each hop shown.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object, last.")] = False,
    duration: Annotated[float | None, typer.Option(help="Wall seconds of traffic (default demo.duration_s).")] = None,
) -> None:
    """The main job: the whole loop on real traffic, shown as it happens.

    The stack and the pool come up; a NASA 1995 morning ramp is replayed (time-compressed) through
    HAProxy to the pool's `demo.loop_service`; the autoscaler scales it predictively with the HPA-style
    policy in shadow, the health controller drains at-risk instances, and one instance gets a leak
    that ends in a crash. It ends with a summary table (under-provisioned seconds and replica-seconds
    beside the shadow HPA and the oracle, client p99 and errors, the drain's lead over the crash,
    decisions) and an HTML report with charts under the state folder. Watch it live on the dashboard
    (`foresight dashboard`, http://127.0.0.1:19120/). `--quick` keeps the 30-second thin path.
    """
    c = _ctx(ctx)
    if quick:
        from infra.demo import run_demo

        if not run_demo(c.settings, c.config, console, _say):
            raise typer.Exit(1)
        return
    from infra.closed_loop import run_closed_loop
    from infra.stack.launcher import StackError, up

    s = c.settings
    if duration is not None:
        s = s.model_copy(update={"demo": s.demo.model_copy(update={"duration_s": duration})})
    console.rule("Foresight demo: predictive scaling and draining on a real traffic ramp")
    try:
        up(s, _say, c.config)
    except StackError as exc:
        err.print(f"[red]stack up failed:[/] {exc}")
        raise typer.Exit(1) from exc
    report_dir = s.state / "reports" / f"demo-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        summary = run_closed_loop(s, _say, report_dir, progress=not as_json)
    except (RuntimeError, ValueError, OSError) as exc:
        err.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"closed loop, {summary.wall_s:g} s of traffic")
    for column in ("", "predictive", "shadow HPA", "oracle", "informed bound", "measured (predictive)"):
        table.add_column(column)
    table.add_row("under-provisioned s", *(str(summary.underprov_s.get(k)) for k in ("predictive", "hpa_shadow")),
                  "0", *(str(summary.underprov_s.get(k)) for k in ("informed", "predictive_measured")))
    table.add_row("replica-seconds", *(str(summary.replica_seconds.get(k)) for k in (
        "predictive", "hpa_shadow", "oracle", "informed", "predictive_measured")))
    console.print(table)
    if summary.hpa_whatif:
        whatif = Table(title="the reactive policy again on the recorded load, at other HPA targets (offline)")
        for column in ("HPA target", "under-provisioned s", "replica-seconds"):
            whatif.add_column(column)
        for target, fig in summary.hpa_whatif.items():
            mark = "  <- as safe as predictive, cheapest" if target == summary.hpa_at_predictive_slo else ""
            whatif.add_row(target + mark, f"{fig['underprov_s']:g}", f"{fig['replica_seconds']:g}")
        console.print(whatif)
    lead = "none (not drained)" if summary.drain_lead_s is None else f"{summary.drain_lead_s} s before the crash"
    console.print(f"clients: p99 {summary.client_p99_ms} ms, errors {summary.client_error_pct} %; drain lead "
                  f"{lead}; {summary.decisions} decisions")
    _print_demo_checks(console, summary)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: {summary.report}")
    if as_json:
        print(summary.model_dump_json())


def _print_demo_checks(out: Console, summary: LoopSummary) -> None:
    """The demo's claims, each with its verdict and the figures it was read from."""
    c = summary.checks
    if not c:
        return

    def mark(key: str) -> str:
        ok = c.get(key)
        return "[dim]unknown[/]" if ok is None else ("[green]yes[/]" if ok else "[red]no[/]")

    under = summary.underprov_s
    pred, hpa = summary.replica_seconds.get("predictive"), summary.replica_seconds.get("hpa_shadow")
    ratio = f"{pred / hpa:.2f} x" if pred is not None and hpa else "unknown"
    out.print(f"within the SLO (under-provisioned at most {summary.slo_allowed_s:g} s of {summary.wall_s:g} s): "
              f"predictive {mark('predictive_within_slo')} ({under.get('predictive')} s), shadow HPA "
              f"{mark('hpa_shadow_within_slo')} ({under.get('hpa_shadow')} s)")
    out.print(f"predictive cheaper than the shadow HPA: {mark('predictive_cheaper_than_hpa_shadow')} ({ratio} its "
              f"replica-seconds); within the SLO and cheaper: {mark('predictive_meets_slo_cheaper_than_hpa')}")
    lead, before = summary.drain_lead_s, summary.drain_before_errors_s
    when = "" if lead is None else f" ({lead:g} s before its crash, " + (
        "no client error before it" if before is None else
        f"{before:g} s before its first failed request" if before > 0 else
        f"{-before:g} s after its first failed request") + ")"
    out.print(f"faulty instance drained before it failed: {mark('drained_before_failure')}{when}")


@app.command()
def dashboard(ctx: typer.Context) -> None:
    """Serve the live dashboard: one page per service (traffic and forecast band, replicas beside the
    shadow HPA, weights and risk, decisions with reasons, component health), updated live.

    Open http://127.0.0.1:19120/ (add `?token=...` once when `dashboard.token` is set). Everything it
    shows is read from ClickHouse, so it shows what the control plane saw and did.
    """
    import uvicorn

    from infra.core.db import client as clickhouse_client
    from infra.dashboards.data import DashboardData
    from infra.dashboards.health import cached_stack_health
    from infra.dashboards.web import build_dashboard_app

    s = _ctx(ctx).settings
    data = DashboardData(clickhouse_client(s.clickhouse, s.clickhouse.database), s.clickhouse.database,
                         cached_stack_health(s), window_minutes=s.dashboard.window_minutes)
    app_ = build_dashboard_app(data, token=s.dashboard_token, refresh_s=s.dashboard.refresh_s)
    uvicorn.run(app_, host=s.dashboard.host, port=s.dashboard.port, log_level="warning")


@app.command()
def grafana(
    out: Annotated[Path | None, typer.Option(help="Write the dashboard JSON here instead of to stdout.")] = None,
) -> None:
    """Print the Grafana dashboard (JSON, generated from code) to import into Grafana.

    It reads the stack's Prometheus (pick it as the `datasource` variable on import); a
    `service` variable selects the service. The same panels as `foresight dashboard`.
    """
    from infra.dashboards.grafana import dashboard_json

    text = dashboard_json()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


@app.command("demo-days")
def demo_days_command(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, help="Weekdays before the demo's slice to replay it on.")] = 16,
    startup: Annotated[float | None, typer.Option(
        min=0, help="Wall seconds an instance takes to start, in place of the demo service's `startup_delay_s` (20 "
        "s, 20 trace minutes at 60x): the comparison with faster or slower instances.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object, last.")] = False,
) -> None:
    """Is the demo's one run typical? Its autoscaling replayed offline on the same hours of earlier weekdays.

    No stack needed. For each of the `--days` weekdays before the demo's slice (and the slice itself, shown
    apart): a forecaster trained as the demo trains its own, on the minutes before that day only; the trace's
    load in the demo's windows, landed as late as the stream worker lands them; a round each
    `demo.autoscale_interval_s`; the predictive policy at each served quantile and headroom and the reactive
    HPA at each target, through the same guardrails, paper pool and replay as the demo. Prints, per
    variant, the days within the SLO, the under-provisioned share, replica-seconds against HPA at 0.8, and
    the cheapest HPA target as safe. About 5 s a day on two cores.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from infra.demo_days import demo_days_for

    c = _ctx(ctx)
    with Progress(TextColumn("training and replaying"), BarColumn(), TextColumn("{task.completed}/{task.total} "
                  "days"), TimeElapsedColumn(), console=err, disable=as_json) as bar:
        task = bar.add_task("days", total=days + 1)
        try:
            result = demo_days_for(c.settings, days, tick=lambda _day: bar.advance(task), startup_s=startup)
        except (ValueError, OSError) as exc:
            err.print(f"[red]demo-days failed:[/] {exc}")
            raise typer.Exit(1) from exc
    for title, scores in ((f"the demo's autoscaling on {len(result.days)} weekdays before its slice",
                           result.scores), ("on the demo's own slice, the same replay", result.demo_slice)):
        table = Table(title=title)
        for column in ("variant", "days within SLO", "under-provisioned %", "replica-seconds", "x HPA 0.8",
                       "HPA target as safe"):
            table.add_column(column)
        for name, v in scores.items():
            safe = result.hpa_as_safe.get(name) if scores is result.scores else None
            ratio = "" if safe is None else f" ({v.replica_seconds / scores[safe].replica_seconds:.2f} x its cost)"
            table.add_row(name, f"{v.days_within_slo}/{v.days}", f"{v.underprov_pct:g}", f"{v.replica_seconds:g}",
                          "" if v.vs_hpa_usual is None else f"{v.vs_hpa_usual:g}",
                          "" if not name.startswith("predictive") or scores is not result.scores
                          else (safe or "none") + ratio)
        console.print(table)
    beyond = sum(result.beyond_reach_s.get(str(d), 0.0) for d in result.days)
    slo = (f"SLO: under-provisioned at most {result.slo_pct:g} % of the seconds judged ({beyond:g} s of the days' load "
           f"was beyond reach, short for every variant: over max_replicas, or before a first scale-up could be ready)")
    console.print(f"instances start in {result.startup_s:g} s; {slo}; cheapest within it over all the days: predictive "
                  f"{result.within_slo.get('predictive') or 'none'}, HPA {result.within_slo.get('hpa') or 'none'}")
    if as_json:
        print(result.model_dump_json())


@app.command("demo-backend", hidden=True)
def demo_backend(
    name: Annotated[str, typer.Option()],
    port: Annotated[int, typer.Option()],
    latency_ms: Annotated[float, typer.Option()] = 10.0,
) -> None:
    """One demo backend instance (started by the stack)."""
    from infra.demo_backend import serve as serve_backend

    serve_backend(name, "127.0.0.1", port, latency_ms)


# -- foresight registry: instances in etcd ----------------------------------------------------------------

registry_app = _typer(
    help="Service registry in etcd: list instances, drain or undrain one, deregister one, see the leaders.\n\n"
    "Keys: `<prefix>/services/<service>/instances/<instance>` (JSON, under the instance's lease). "
    "drain/undrain/deregister are refused (exit status 2) when they would leave a service without a "
    "ready instance or take more than registry.max_unavailable of it out of service at once; each "
    "change is recorded as a decision (actuator etcd) on the decisions topic.",
    no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _registry(s: Settings) -> Registry:
    from infra.core.service_registry import Registry

    return Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s)


def _entry_row(e: RegistryEntry) -> dict[str, object]:
    r = e.record
    return {"service": e.service, "instance": e.instance, "mod_revision": e.mod_revision, "lease": e.lease,
            "valid": r is not None, "error": e.error, "record": r.model_dump() if r is not None else None}


@registry_app.command("list")
def registry_list(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="Only this service (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="{revision, instances: [...]}; invalid values have "
                                          "valid=false and their error.")] = False,
) -> None:
    """Every registered instance: state, weight, address, who set the state; invalid values with their error."""
    from infra.core.service_registry import RegistryError

    s = _ctx(ctx).settings
    try:
        snap = _registry(s).snapshot(service)
    except RegistryError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps({"revision": snap.revision, "instances": [_entry_row(e) for e in snap.entries]}))
        return
    table = Table(title=f"registry {s.registry.prefix} at revision {snap.revision}")
    for col in ("service", "instance", "state", "weight", "address", "version", "set by", "mod rev"):
        table.add_column(col, overflow="fold")
    colours = {"ready": "green", "draining": "yellow", "drained": "dim"}
    for e in snap.entries:
        r = e.record
        if r is None:
            table.add_row(e.service, e.instance, "[red]invalid[/]", "", str(e.error), "", "", str(e.mod_revision))
            continue
        table.add_row(e.service, e.instance, f"[{colours[r.state]}]{r.state}[/]", str(r.weight),
                      f"{r.address}:{r.port}", r.version, r.metadata.get("set_by", ""), str(e.mod_revision))
    console.print(table)
    if not snap.entries:
        _say("no instances registered" + (f" for {service}" if service else ""))


@registry_app.command("leaders")
def registry_leaders(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="[{service, role, holder, lease, mod_revision}].")] = False,
) -> None:
    """Who leads each service, per kind of controller (role): `<prefix>/leaders/<service>/<role>`."""
    from dataclasses import asdict

    from infra.core.service_registry import RegistryError

    s = _ctx(ctx).settings
    try:
        found = _registry(s).leaders()
    except RegistryError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps([asdict(info) for info in found]))
        return
    table = Table(title=f"leaders under {s.registry.prefix}")
    for col in ("service", "role", "holder", "lease"):
        table.add_column(col, overflow="fold")
    for info in found:
        table.add_row(info.service, info.role or "-", info.holder, str(info.lease))
    console.print(table)
    if not found:
        _say("no controller leads any service")


@registry_app.command("show")
def registry_show(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service name.")],
    instance: Annotated[str, typer.Argument(help="Instance name.")],
    as_json: Annotated[bool, typer.Option("--json", help="The entry as JSON.")] = False,
) -> None:
    """One instance's record, mod_revision and lease (exit status 1 if it is not registered)."""
    from infra.core.service_registry import RegistryError

    s = _ctx(ctx).settings
    try:
        entry = _registry(s).get(service, instance)
    except (RegistryError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if entry is None:
        err.print(f"[red]error:[/] no instance {service}/{instance} (see `foresight registry list`)")
        raise typer.Exit(1)
    row = _entry_row(entry)
    print(json.dumps(row) if as_json else json.dumps(row, indent=2))


def _registry_change(ctx: typer.Context, service: str, instance: str, action: str, as_json: bool) -> None:
    from infra.core.service_registry import RegistryError
    from infra.workers import decision_log
    from lb_adapters import registry_admin

    s = _ctx(ctx).settings
    registry = _registry(s)
    try:
        # durable: a decision Kafka or ClickHouse cannot take now waits in this command's spool
        sink = decision_log(s, "registry-cli")
    except Exception as exc:
        err.print(f"[red]error:[/] cannot record decisions on {s.kafka.topic_decisions} at "
                  f"{s.kafka.bootstrap_servers} ({exc}); nothing changed. Is Kafka up? (`foresight stack status`)")
        raise typer.Exit(1) from exc
    try:
        if action == "deregister":
            result = registry_admin.deregister(registry, sink, service, instance, s.registry.max_unavailable)
        else:
            result = registry_admin.change_state(registry, sink, service, instance,
                                                 "drain" if action == "drain" else "undrain",
                                                 s.registry.max_unavailable)
    except registry_admin.AdminRefused as exc:
        err.print(f"[red]refused:[/] {exc}")
        if as_json:
            print(json.dumps({"service": service, "instance": instance, "action": action, "changed": False,
                              "refused": str(exc)}))
        raise typer.Exit(2) from exc
    except (registry_admin.AdminNotFound, registry_admin.DecisionNotRecorded, RegistryError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        if not sink.wait_replayed(timeout=5):
            err.print(f"[yellow]warning:[/] a decision is still spooled under {s.decision_spool_dir / 'registry-cli'}; "
                      "the next `foresight registry` change sends it")
        with contextlib.suppress(Exception):  # a close that cannot flush was reported by publish already
            sink.close()
    if as_json:
        print(result.model_dump_json())
    else:
        _say(result.message + ("" if result.changed else " (nothing to do)"))


_SERVICE_ARG = Annotated[str, typer.Argument(help="Service name.")]
_INSTANCE_ARG = Annotated[str, typer.Argument(help="Instance name (see `foresight registry list`).")]
_CHANGE_JSON = Annotated[bool, typer.Option("--json", help="The result as JSON: {service, instance, action, "
                                            "before, after, changed, message} (or {refused} with exit 2).")]


@registry_app.command("drain")
def registry_drain(ctx: typer.Context, service: _SERVICE_ARG, instance: _INSTANCE_ARG,
                   as_json: _CHANGE_JSON = False) -> None:
    """Mark an instance `draining` (the balancers stop sending it new requests). Pinned: no controller
    undoes it. Refused (exit 2) for the last ready instance or past registry.max_unavailable."""
    _registry_change(ctx, service, instance, "drain", as_json)


@registry_app.command("undrain")
def registry_undrain(ctx: typer.Context, service: _SERVICE_ARG, instance: _INSTANCE_ARG,
                     as_json: _CHANGE_JSON = False) -> None:
    """Put a draining or drained instance back to `ready`."""
    _registry_change(ctx, service, instance, "undrain", as_json)


@registry_app.command("deregister")
def registry_deregister(ctx: typer.Context, service: _SERVICE_ARG, instance: _INSTANCE_ARG,
                        as_json: _CHANGE_JSON = False) -> None:
    """Delete an instance's key (the balancers drop it). Refused (exit 2) for the last ready instance;
    drain it first. A running instance keeps its lease but does not re-register by itself."""
    _registry_change(ctx, service, instance, "deregister", as_json)


# -- foresight pool / registry-sync: the instance pool and balancer membership ---------------------------

pool_app = _typer(
    help="The local instance pool: real backend processes per service (pool.services), scaled with graceful "
    "drain.\n\n`foresight pool run` is the stack component `pool`; `status` and `scale` talk to its admin API "
    "(pool.admin_port, loopback).",
    no_args_is_help=True,
)
app.add_typer(pool_app, name="pool")


@pool_app.command("run")
def pool_run(ctx: typer.Context) -> None:
    """Run the pool and its admin API until SIGTERM; each instance registers in etcd once warmed up."""
    from infra.pool.admin import run_pool

    run_pool(_ctx(ctx).settings)


def _pool_call(s: Settings, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    import httpx

    url = f"http://127.0.0.1:{s.pool.admin_port}{path}"
    try:
        resp = httpx.request(method, url, json=body, timeout=10.0)
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/] the pool's admin API at {url} does not answer ({exc}); "
                  "is the pool running? (`foresight stack status`)")
        raise typer.Exit(1) from exc
    if resp.status_code >= 400:
        err.print(f"[red]error:[/] {resp.status_code}: {resp.json().get('detail', resp.text)}")
        raise typer.Exit(2)
    data: dict[str, object] = resp.json()
    return data


def _print_pool(data: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=f"pool {data['service']}: desired {data['desired']}, current {data['current']}, "
                        f"ready {data['ready']}")
    for col in ("instance", "port", "state", "pid"):
        table.add_column(col)
    for row in data["instances"]:  # type: ignore[attr-defined]
        table.add_row(row["instance"], str(row["port"]), row["state"], str(row["pid"]))
    console.print(table)


@pool_app.command("status")
def pool_status(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="A service of pool.services, e.g. `web`.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Desired, running and ready instances of one service, each with its state."""
    _print_pool(_pool_call(_ctx(ctx).settings, "GET", f"/v1/pools/{service}"), as_json)


@pool_app.command("scale")
def pool_scale(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="A service of pool.services, e.g. `web`.")],
    replicas: Annotated[int, typer.Argument(help="Instances wanted, within the service's min/max.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ask for N instances: new ones start and register; extra ones drain first, then stop. Exit 2 if refused."""
    _print_pool(_pool_call(_ctx(ctx).settings, "PUT", f"/v1/pools/{service}/replicas", {"replicas": replicas}),
                as_json)


@app.command("pool-backend", hidden=True)
def pool_backend(
    ctx: typer.Context,
    service: Annotated[str, typer.Option()],
    instance: Annotated[str, typer.Option()],
    port: Annotated[int, typer.Option()],
    scenario: Annotated[Path | None, typer.Option(help="Fault scenario (YAML) whose faults for this instance "
                                                       "it plays, from the moment it is ready.")] = None,
    index: Annotated[int | None, typer.Option(help="This instance's index in the pool, for faults on `#k`.")] = None,
) -> None:
    """One pool instance (started by `foresight pool run`)."""
    from infra.core.service_registry import Registry
    from infra.pool.backend import run_registered
    from infra.pool.faults import Fault, Scenario, load_scenario

    s = _ctx(ctx).settings
    svc = s.pool.service(service)
    if svc is None:
        err.print(f"[red]error:[/] service {service!r} is not in pool.services")
        raise typer.Exit(2)
    scenario = scenario or svc.scenario
    try:
        plan = load_scenario(scenario) if scenario else None
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/] fault scenario {scenario}: {exc}")
        raise typer.Exit(2) from exc
    faults = plan.for_instance(instance, -1 if index is None else index) if plan else []

    def record_truth(played: list[Fault], t0_ms: int) -> None:
        """The labels of the health models; losing them would silently bias an evaluation, so say so."""
        from infra.pool.ground_truth import fault_rows, record_faults

        scenario_ = plan or Scenario(name="injected")
        try:
            record_faults(s.clickhouse, fault_rows(scenario_, played, service, instance, t0_ms))
        except Exception as exc:
            logging.getLogger("foresight.pool").error("%s/%s: fault ground truth not recorded: %s", service,
                                                      instance, exc)

    run_registered(service, instance, port, svc, Registry(s.registry_endpoint, s.registry.prefix,
                                                          s.registry.timeout_s), s.registry.lease_ttl_s, faults,
                   on_faults=record_truth)


faults_app = _typer(help="Fault scenarios for the pool's backends (slowdown, capacity loss, errors, hang, "
                                "crash, leak).", no_args_is_help=True)
app.add_typer(faults_app, name="faults")


@faults_app.command("generate")
def faults_generate(
    seed: Annotated[int, typer.Option(help="Same seed, same scenario.")],
    instances: Annotated[int, typer.Option(help="Instances in the pool; faults name them `#0`, `#1`, ...")] = 4,
    duration: Annotated[float, typer.Option(help="Seconds the run lasts; faults start in its middle half.")] = 300.0,
    faults: Annotated[int, typer.Option(help="Faulty instances (always fewer than all).")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the scenario here instead of to stdout.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML (still a valid scenario file).")
                       ] = False,
) -> None:
    """Generate a reproducible fault scenario from a seed (keep held-out seeds out of training)."""
    from infra.pool.faults import dump_scenario, generate

    try:
        scenario = generate(seed, instances, duration, faults)
        text = scenario.model_dump_json(exclude_none=True) + "\n" if as_json else dump_scenario(scenario)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


def parse_seeds(text: str) -> list[int]:
    """`1-20`, `1,5,9` or `1000-1007,1010`: the seeds, in order, each once."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            span = range(int(low), int(high or low) + 1)
        except ValueError as exc:
            raise typer.BadParameter(f"{part!r}: seeds are N, N-M or a comma list of those", param_hint="--seeds"
                                     ) from exc
        out += [x for x in span if x not in out]
    if not out:
        raise typer.BadParameter("no seed given", param_hint="--seeds")
    return out


def parse_kinds(text: str) -> tuple[FaultKind, ...]:
    from infra.pool.faults import KINDS

    out = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in out if k not in KINDS]
    if bad or not out:
        raise typer.BadParameter(f"{', '.join(bad) or 'none'}: kinds are {', '.join(KINDS)}", param_hint="--kinds")
    return out  # type: ignore[return-value]


@faults_app.command("record")
def faults_record(
    ctx: typer.Context,
    seeds: Annotated[str, typer.Option(help="Scenario seeds, e.g. `1-20` (train) or `1000-1007` (held out: at "
                                       "or above health.heldout_seed_from). One service `health-s<seed>` each.")],
    out: Annotated[Path | None, typer.Option(help="Dataset folder (default `<state>/datasets/risk`).")] = None,
    duration: Annotated[float, typer.Option(min=30, help="Seconds of load per batch; faults start in its middle "
                                            "half, leaks fail 30-120 s after their onset.")] = 240.0,
    batch: Annotated[int, typer.Option(min=1, help="Services recorded at once on one private stack (2 cores: 4 "
                                       "keep the load client within ~40 ms and the worker within its lateness; "
                                       "8 put the client ~1 s behind).")] = 4,
    utilisation: Annotated[float, typer.Option(min=0.05, max=0.95, help="Load as a share of a service's healthy "
                                               "capacity (4 instances x --capacity).")] = 0.65,
    capacity: Annotated[float, typer.Option(min=1, help="Requests/s one instance serves.")] = 12.0,
    window: Annotated[int, typer.Option(min=1, help="Feature window length, seconds.")] = 2,
    kinds: Annotated[str, typer.Option(help="Fault kinds the generator draws from, uniformly (a repeat weighs "
                                       "one): the default triples leaks, the one kind with precursors.")
                     ] = "leak,leak,leak,slowdown,capacity_loss,errors,hang,crash",
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON summary last.")] = False,
) -> None:
    """Record a fault dataset for the risk model: per batch of seeds, a private stack (free ports, temp folder)
    runs one pool service per seed (4 instances, one playing the seed's generated fault) under an open-loop
    Poisson load through HAProxy, then exports its instance windows joined with the ground truth
    (`fault_events`) and HAProxy's per-request log to parquet files under --out. Training and
    `foresight evaluate risk` read those files; the stack is gone afterwards.

    Example: `foresight faults record --seeds 1-20` then `--seeds 1000-1007` for the held-out set.
    """
    from rich.progress import Progress

    from infra.fault_dataset import RecordPlan, record_dataset

    s = _ctx(ctx).settings
    plan = RecordPlan(seeds=parse_seeds(seeds), duration_s=duration, utilisation=utilisation, capacity_rps=capacity,
                      batch=batch, window_s=window, kinds=parse_kinds(kinds))
    folder = out or s.state / "datasets" / "risk"
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"recording {len(plan.seeds)} seed(s) in {len(plan.batches())} batch(es)",
                            total=len(plan.seeds))
        summary = record_dataset(plan, folder, s.health.heldout_seed_from, _say,
                                 progress=lambda n: bar.advance(task, n))
    if not as_json:
        console.print(f"dataset: {summary['windows']} windows, {summary['requests']} requests under {folder}")
    print(json.dumps(summary))


@app.command("registry-sync")
def registry_sync(ctx: typer.Context) -> None:
    """HAProxy and nginx membership follow the registry (a watch on etcd) until SIGTERM.

    HAProxy changes through its runtime API (add, drain, maintenance, delete; no reload); nginx's
    upstream file is re-rendered, checked with `nginx -t` and reloaded gracefully. One copy per service
    acts (leadership in etcd); another stands by. etcd down: the balancers keep the last membership.
    """
    from infra.workers import run_registry_sync

    run_registry_sync(_ctx(ctx).settings)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
