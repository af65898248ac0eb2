"""The `foresight` command line. Every command reads the same settings (see README, Configuration)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.core.settings import ConfigFileError, Settings, load_settings

app = typer.Typer(
    help="Foresight: a predictive high-availability control plane.\n\n"
    "Start with `foresight doctor`, then `foresight stack up` and `foresight demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="Start, stop and inspect the local stack of real servers.", no_args_is_help=True)
db_app = typer.Typer(help="ClickHouse schema.", no_args_is_help=True)
ingest_app = typer.Typer(help="Ingest sources: files, syslog, HTTP, Prometheus scrape.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: figures against a baseline measured in the same run.", no_args_is_help=True)
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
def stack_down(ctx: typer.Context) -> None:
    """Stop exactly the processes `stack up` started."""
    from infra.stack.launcher import down

    stopped = down(_ctx(ctx).settings, _say)
    _say(f"stopped {len(stopped)} component(s)" if stopped else "nothing was running")


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
) -> None:
    """Print the effective settings as JSON (file + environment + defaults)."""
    if reference:
        from infra.core.config_doc import markdown_table

        print(markdown_table())
        return
    print(_ctx(ctx).settings.model_dump_json(indent=2))


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply the ClickHouse migrations not yet applied (idempotent)."""
    from infra.core.db import migrate

    applied = migrate(_ctx(ctx).settings.clickhouse)
    _say(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@db_app.command("retain")
def db_retain(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, help="Keep this many whole days; older day partitions are dropped.")],
) -> None:
    """Drop day partitions older than N days from every Foresight table (ClickHouse 18.16 has no TTL)."""
    from infra.core.db import retain

    dropped = retain(_ctx(ctx).settings.clickhouse, days)
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
                             duration_s=duration, max_rps=max_rps, progress=not as_json)
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
                              batch_max=s.ingest.batch_max, profile_path=profile)
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
                               concurrency=concurrency, requests=requests, warmup=warmup)
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


@app.command()
def stream(ctx: typer.Context) -> None:
    """Run a Faust stream worker: `fs.access` + `fs.metrics` -> feature windows -> `fs.features` and ClickHouse."""
    from infra.workers import run_stream_worker

    run_stream_worker(_ctx(ctx).settings)


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
) -> None:
    """Run the weight adapter: latest features -> /v1/weights -> policy -> HAProxy runtime API."""
    from infra.workers import build_weight_controller

    s = _ctx(ctx).settings
    if dry_run:
        s = s.model_copy(update={"adapter": s.adapter.model_copy(update={"dry_run": True})})
    controller = build_weight_controller(s)
    target = service or s.demo.service
    if not once:
        from prometheus_client import start_http_server

        start_http_server(s.adapter.metrics_port, addr="127.0.0.1")
    from clickhouse_driver.errors import Error as ClickHouseError
    from kafka.errors import KafkaError
    from pydantic import ValidationError

    from lb_adapters.actuators.base import ActuatorError
    from lb_adapters.metrics import ROUNDS
    from lb_adapters.predictions import ServingError

    # What an unavailable dependency raises: serving, ClickHouse, HAProxy's socket, Kafka, a malformed
    # answer. A round that meets one is counted and the loop goes on; anything else is a bug and ends it.
    round_errors = (ServingError, ClickHouseError, ActuatorError, KafkaError, ValidationError, OSError, EOFError)
    while True:
        try:
            report = controller.step(target)
        except round_errors as exc:  # one failed round (serving or ClickHouse away) must not end the loop
            ROUNDS.labels("failed").inc()
            _say(f"[red]round failed:[/] {exc}")
            if once:
                raise typer.Exit(1) from exc
        else:
            ROUNDS.labels("ok").inc()
            for d in report.decisions:
                _say(f"{d.target}: weight {d.before} -> {d.after} ({d.reason}; {d.outcome})")
            if report.note:
                _say(report.note)
        if once:
            return
        time.sleep(interval)


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
    fault: Annotated[list[str] | None, typer.Option("--fault", help="Component to crash (repeatable), in turn; "
                                                    "default stream-worker, clickhouse, etcd.")] = None,
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
) -> None:
    """Train on the past of a trace, then score forecaster, baselines and autoscaling policies on its test range.

    Prints the JSON result as the last line of stdout; progress goes to stderr.
    """
    from training.backtest_command import backtest_command

    try:
        backtest_command(trace, test_from=test_from, val_from=val_from, scale=scale, capacity=capacity,
                         startup_s=startup, slo_pct=slo, start=start, report=report, epochs=epochs, seed=seed,
                         threads=threads, as_json=as_json, refit=refit)
    except ValueError as exc:  # a trace too short or splits out of order: say which, no traceback
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def train(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(help="Model kind; only `forecast` is trained here.")] = "forecast",
    source: Annotated[str, typer.Option(help="`file:PATH` (per-second trace) or `clickhouse` (feature windows "
                                        "of --service).")] = "clickhouse",
    service: Annotated[str | None, typer.Option(help="Service to read from ClickHouse (default: the demo "
                                                "service).")] = None,
    start: Annotated[str | None, typer.Option(help="ISO time of a trace file's first second.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 8,
    members: Annotated[int, typer.Option(help="MLPs trained side by side and averaged.")] = 1,
    hidden: Annotated[int, typer.Option(help="Width of each MLP's hidden layers.")] = 256,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    val_frac: Annotated[float, typer.Option(help="Tail of the data held out for epoch choice and metrics.")] = 0.15,
    ray_address: Annotated[str | None, typer.Option(help="ray://host:port of a cluster; default: the configured "
                                                    "ray.address, else a local Ray.")] = None,
    workers: Annotated[int, typer.Option(help="0: one Ray task; N: Ray Train's TorchTrainer with N data-parallel "
                                         "workers.")] = 0,
) -> None:
    """Train a forecaster on Ray and write it to the model registry (and ClickHouse `model_versions`)."""
    from training.fit import TrainConfig
    from training.train_command import train_command

    if kind != "forecast":
        raise typer.BadParameter("only --kind forecast is trained by this command", param_hint="--kind")
    s = _ctx(ctx).settings
    try:
        train_command(source=source, service=service or s.demo.service, start=start,
                      cfg=TrainConfig(epochs=epochs, members=members, hidden=hidden, seed=seed), val_frac=val_frac,
                      ray_address=ray_address or s.ray.address, ray_num_cpus=s.ray.num_cpus, state_dir=s.state,
                      ch=s.clickhouse, workers=workers)
    except ValueError as exc:  # no data for the service, too little history, a bad --source
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def demo(ctx: typer.Context) -> None:
    """The main job: bring the stack up, send traffic through HAProxy, show every hop with timings."""
    from infra.demo import run_demo

    c = _ctx(ctx)
    if not run_demo(c.settings, c.config, console, _say):
        raise typer.Exit(1)


@app.command("demo-backend", hidden=True)
def demo_backend(
    name: Annotated[str, typer.Option()],
    port: Annotated[int, typer.Option()],
    latency_ms: Annotated[float, typer.Option()] = 10.0,
) -> None:
    """One demo backend instance (started by the stack)."""
    from infra.demo_backend import serve as serve_backend

    serve_backend(name, "127.0.0.1", port, latency_ms)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
