"""One settings object for every stage, read from `foresight.toml` and `FORESIGHT_*` variables.

Precedence, highest first: explicit arguments, environment (`FORESIGHT_KAFKA__BOOTSTRAP_SERVERS`,
nested sections joined by `__`), the TOML file, the defaults below. `infra/` builds each stage's
objects from its own section; stages never read the environment themselves.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.core.scaling import ScalingKnobs, predictive_knobs, reactive_knobs

LOOPBACK = "127.0.0.1"


class Section(BaseModel):
    """A settings section; a misspelt key is an error, not a silently ignored line.

    A secret field `x` (SecretStr) may come from a file instead: `x_file` names it (a Kubernetes
    Secret volume, a Docker secret). The file's content, less a trailing newline, is the value.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Self:
        for name, info in type(self).model_fields.items():
            if "SecretStr" not in str(info.annotation):
                continue
            source = getattr(self, f"{name}_file", None)
            if source is None:
                continue
            if getattr(self, name):
                raise ValueError(f"{name} and {name}_file are both set: keep one")
            try:
                value = Path(source).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{name}_file {source}: {exc.strerror or exc}") from exc
            object.__setattr__(self, name, SecretStr(value))
        return self


def _ssl_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None,
                 check_hostname: bool = True) -> ssl.SSLContext:
    """A client TLS context: the CA (else the system's), and a client certificate when given."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.check_hostname = check_hostname
    if certfile:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


class KafkaSettings(Section):
    bootstrap_servers: str = Field(f"{LOOPBACK}:19092", description="Kafka bootstrap servers, comma-separated.")
    partitions: int = Field(4, description="Partitions for the topics the stack creates.")
    topic_access: str = Field("fs.access", description="Access events (single or batch records).")
    topic_metrics: str = Field("fs.metrics", description="Metric samples.")
    topic_dlq: str = Field("fs.dlq", description="Rejected input with its reason.")
    topic_features: str = Field("fs.features", description="Closed feature windows.")
    topic_decisions: str = Field("fs.decisions", description="Adapter decisions.")
    compression: str = Field("zstd", description="Producer compression codec (zstd is ~5x cheaper than gzip here).")
    linger_ms: int = Field(5, description="Producer linger; higher batches more.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security: SASL_SSL for SASL over TLS, SSL for TLS (client certificates).")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism, with `security_protocol` SASL_PLAINTEXT or SASL_SSL.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (masked in `foresight config`).")
    sasl_password_file: Path | None = Field(None, description="File holding the SASL password instead.")
    ssl_cafile: Path | None = Field(None, description="PEM CA bundle that signed the brokers' certificates; "
                                    "none = the system's.")
    ssl_certfile: Path | None = Field(None, description="PEM client certificate (TLS client authentication).")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of `ssl_certfile`.")
    ssl_check_hostname: bool = Field(True, description="Check the brokers' certificates name their host.")

    @model_validator(mode="after")
    def _security_is_complete(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        has_password = self.sasl_password is not None or self.sasl_password_file is not None
        if sasl and not (self.sasl_mechanism and self.sasl_username and has_password):
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_mechanism, "
                             "kafka.sasl_username and kafka.sasl_password (or sasl_password_file)")
        if not sasl and (self.sasl_mechanism or self.sasl_username):
            raise ValueError("kafka.sasl_* is set but kafka.security_protocol is "
                             f"{self.security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile):
            raise ValueError(f"kafka.ssl_* is set but kafka.security_protocol is {self.security_protocol}: "
                             "use SSL or SASL_SSL")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for aiokafka and Faust (kafka-python takes the files themselves)."""
        if not self.uses_tls:
            return None
        return _ssl_context(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_check_hostname)

    def _sasl_options(self) -> dict[str, Any]:
        """The protocol and SASL keyword arguments, named alike by kafka-python and aiokafka."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            options |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None}
        return options

    def kafka_python_options(self) -> dict[str, Any]:
        """Security keyword arguments of kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        options = self._sasl_options()
        if self.uses_tls:
            options |= {"ssl_cafile": str(self.ssl_cafile) if self.ssl_cafile else None,
                        "ssl_certfile": str(self.ssl_certfile) if self.ssl_certfile else None,
                        "ssl_keyfile": str(self.ssl_keyfile) if self.ssl_keyfile else None,
                        "ssl_check_hostname": self.ssl_check_hostname}
        return options

    def aiokafka_options(self) -> dict[str, Any]:
        """Security keyword arguments of aiokafka's AIOKafkaConsumer and AIOKafkaProducer."""
        options = self._sasl_options()
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        return options

    @property
    def topics(self) -> list[str]:
        return [self.topic_access, self.topic_metrics, self.topic_dlq, self.topic_features, self.topic_decisions]

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])


class ClickHouseSettings(Section):
    host: str = Field(LOOPBACK, description="ClickHouse server host.")
    tcp_port: int = Field(19000, description="Native protocol port (clickhouse-driver).")
    http_port: int = Field(18123, description="HTTP port (health checks).")
    database: str = Field("foresight", description="Database of every Foresight table.")
    user: str = Field("default", description="ClickHouse user.")
    password: SecretStr = Field(SecretStr(""), description="ClickHouse password (masked in `foresight config`).")
    password_file: Path | None = Field(None, description="File holding the ClickHouse password instead.")
    secure: bool = Field(False, description="TLS to the native port (a cluster's is usually 9440).")
    ca_certs: Path | None = Field(None, description="PEM CA bundle that signed the server's certificate; "
                                  "none = the system's.")
    verify: bool = Field(True, description="Check the server's certificate (only turn off to debug).")
    certfile: Path | None = Field(None, description="PEM client certificate, for servers that ask for one.")
    keyfile: Path | None = Field(None, description="PEM private key of `certfile`.")

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments of clickhouse-driver's Client (host, credentials, TLS)."""
        options: dict[str, Any] = {"host": self.host, "port": self.tcp_port, "user": self.user,
                                   "password": self.password.get_secret_value(), "secure": self.secure}
        if self.secure:
            options |= {"verify": self.verify, "ca_certs": str(self.ca_certs) if self.ca_certs else None,
                        "certfile": str(self.certfile) if self.certfile else None,
                        "keyfile": str(self.keyfile) if self.keyfile else None}
        return options


class EtcdSettings(Section):
    client_port: int = Field(12379, description="etcd client API.")
    peer_port: int = Field(12380, description="etcd peer port (single member).")
    metrics_port: int = Field(12381, description="etcd Prometheus metrics.")


# Where HAProxy's runtime API answers: a unix socket, or (host, port) of a TCP `stats socket`.
RuntimeAddress = Path | tuple[str, int]


def host_port(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` too) as (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


class HAProxySettings(Section):
    frontend_port: int = Field(18080, description="Where clients send traffic.")
    exporter_port: int = Field(18404, description="Built-in Prometheus exporter (/metrics).")
    backend: str = Field("demo", description="Backend whose servers the adapter weighs.")
    socket_name: str = Field("haproxy.sock", description="Runtime API socket, inside the state folder.")
    runtime_address: str | None = Field(
        None, description="HAProxy's runtime API over TCP, `host:port` (HAProxy: `stats socket ipv4@0.0.0.0:9999 "
        "level admin`), for `adapt` and `registry-sync` running apart from HAProxy (Kubernetes); none = the unix "
        "socket `socket_name`. It has no authentication: expose it only to them (a NetworkPolicy).")

    @field_validator("runtime_address")
    @classmethod
    def _is_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            host_port(value)
        return value


class DemoSettings(Section):
    """Two small backends of ours behind HAProxy; one is slower, so learned weights differ."""

    service: str = Field("demo", description="Service name of the demo backends (HAProxy backend).")
    ports: list[int] = Field(default_factory=lambda: [18001, 18002], description="One demo backend per port.")
    latencies_ms: list[float] = Field(default_factory=lambda: [5.0, 40.0], description="Latency of each backend.")
    burst_requests: int = Field(400, description="Requests `foresight demo --quick` sends through HAProxy.")
    loop_service: str = Field("shop", description="Pool service the closed-loop demo scales, drains and loads.")
    trace_start: int = Field(2_914_345, ge=0, description="First NASA trace second the demo replays (Monday 7 Aug "
                             "1995, 04:00, in the validation range: the morning ramp follows).")
    speedup: float = Field(60.0, gt=0, description="Trace seconds per wall second (a divisor of 60): 60 replays 8 "
                           "trace hours in 8 minutes. The demo's autoscaler runs on the trace's clock (durations "
                           "and rates in trace units); the trace minutes before the slice are written to "
                           "`features` first, as the service's past.")
    scale: float = Field(1.3, gt=0, description="Multiplier of the trace's rate (NASA's ~1 req/s becomes a load "
                         "for several instances).")
    duration_s: float = Field(480.0, gt=0, description="Wall seconds the closed-loop demo replays.")
    fault_at_s: float = Field(150.0, ge=0, description="When the demo injects its fault into one instance.")
    fault_lead_s: float = Field(75.0, gt=0, description="The injected leak's precursors (latency, resource "
                                "gauge) before it crashes the instance.")
    interval_s: float = Field(5.0, gt=0, description="Wall seconds between rounds of the demo's health controller.")
    autoscale_interval_s: float = Field(1.0, gt=0, description="Wall seconds between rounds of the demo's autoscaler: "
                                        "1 s is one trace minute, the forecaster's step, so HPA's 300 s scale-down "
                                        "stabilization spans 5 rounds (at one round per 300 trace seconds it held one "
                                        "round and both policies flapped).")
    quantile: float = Field(0.99, gt=0, lt=1, description="Forecast quantile the demo's predictive policy "
                            "provisions for, with `headroom`: the cheapest pair within the 0.5% SLO over the 16 "
                            "weekdays before the slice, replayed as the demo runs (`foresight demo-days`; p90 with "
                            "no headroom was short 1.9% of the time there).")
    headroom: float = Field(0.1, gt=-1, description="Extra share over that quantile the demo's predictive policy "
                            "provisions for (0.1 = 10% more).")

    def predictive_knobs(self, min_replicas: int = 1, max_replicas: int = 100_000) -> ScalingKnobs:
        """The demo's predictive policy: the preset at `quantile` and `headroom`, with the service's bounds. Its
        `slo` is the one the demo's summary and `foresight demo-days` judge by."""
        return predictive_knobs(quantile=self.quantile, headroom=self.headroom, min_replicas=min_replicas,
                                max_replicas=max_replicas)


class RouteRule(Section):
    """Names the service/instance of log lines that do not carry them (Common/Combined, JSON)."""

    match: Literal["host", "path_prefix", "file"] = Field(description="What the rule looks at.")
    value: str = Field(description="Host name, path prefix or file glob to match.")
    service: str
    instance: str = Field("*", description="Instance name; `*` keeps the host (or file stem) as instance.")


class IngestSettings(Section):
    syslog_host: str = Field(LOOPBACK, description="Where the syslog receivers listen.")
    syslog_port: int = Field(15514, description="UDP syslog port (other senders; the stack's HAProxy logs over TCP).")
    syslog_tcp_port: int = Field(15515, description="TCP syslog port (RFC 6587 framing).")
    metrics_port: int = Field(19101, description="Prometheus metrics of the ingest process.")
    log_timezone: str | None = Field(None, description="IANA zone of log dates without one; None = this host's.")
    batch_max: int = Field(500, description="Events per Kafka record (batch envelope) at most.")
    http_host: str = Field(LOOPBACK, description="Bind address of the ingest HTTP endpoint.")
    http_port: int = Field(19103, description="Port of `POST /v1/logs` and `POST /v1/metrics`.")
    http_token: SecretStr | None = Field(None, description="Bearer token the HTTP endpoint requires when set.")
    http_token_file: Path | None = Field(None, description="File holding the HTTP endpoint's token instead.")
    http_max_body_bytes: int = Field(10 * 1024 * 1024, description="Larger bodies get 413 (after gunzip).")
    spool_max_bytes: int = Field(256 * 1024 * 1024,
                                 description="Disk spool for when Kafka is down; full = back-pressure.")
    scrape_targets: list[str] = Field(default_factory=list,
                                      description="Prometheus URLs to scrape; empty = the stack's HAProxy exporter.")
    scrape_interval_s: float = Field(2.0, gt=0, description="Seconds between scrapes of each target: at most "
                                     "the shortest feature window (`streams.instance_window_s`), so each has a sample.")
    scrape_registry: bool = Field(True, description="Also scrape every ready or draining instance of the service "
                                  "registry (etcd) at `http://<address>:<port>/metrics`: the pool backends' gauges.")
    scrape_rediscover_every: int = Field(5, ge=1, description="List the registry's instances again every this "
                                         "many scrape intervals.")
    scrape_metrics_port: int = Field(19104, description="Prometheus metrics of the scrape process.")
    default_service: str = Field("unknown", description="Service of lines no rule and no field names.")
    routes: list[RouteRule] = Field(default_factory=list, description="Service/instance rules, first match wins.")
    json_fields: dict[str, str] = Field(
        default_factory=lambda: {"ts": "time", "method": "method", "route": "path", "status": "status",
                                 "latency_ms": "latency_ms", "bytes_sent": "bytes", "service": "service",
                                 "instance": "instance", "host": "host"},
        description="JSON-lines mapping: event field -> key (dotted for nesting) in the input.")


class StreamSettings(Section):
    app_id: str = Field("foresight-features", description="Faust app id and consumer group.")
    window_s: int = Field(10, gt=0, description="Tumbling window length in seconds (service-wide `*` windows; "
                          "per-instance ones too unless `instance_window_s` is set).")
    instance_window_s: int | None = Field(
        None, gt=0, description="Per-instance window length in seconds, a divisor of `window_s` (e.g. 2 for the "
                                "balancing and risk models); none = `window_s`. Service-wide windows stay `window_s`, "
                                "merged from the instance windows they contain.")
    allowed_lateness_s: float = Field(2.0, description="How long after its end a window waits for late events.")
    idle_close_s: float = Field(1.0, description="With no new events for this long, close windows by wall clock.")
    service_retain_s: float = Field(300.0, description="How long a service-wide (`*`) window takes late "
                                    "instance windows (and re-emits itself) before it is retired.")
    max_instances_per_service: int = Field(
        1000, ge=1, description="Instances of one service a stream worker keeps state for; events of any more "
                                "go to the dead-letter topic as `too_many_instances` (untrusted input must not "
                                "decide how much state the worker holds).")
    instance_retain_s: float = Field(
        300.0, ge=0, description="An instance with no open window for this long (event time of its partition) "
                                 "is forgotten, freeing its place under `max_instances_per_service`.")
    take_max: int = Field(2000, description="Kafka records (one event, or an envelope of many) per batch at most.")
    take_within_s: float = Field(0.25, description="Longest wait to fill a batch.")
    producer_batch_bytes: int = Field(
        524_288, gt=0, description="Producer batch size (changelog, features): a state is ~10 KB, so Faust's "
                                   "16 KB default sent about one per request.")
    producer_linger_s: float = Field(0.005, ge=0, description="How long the producer waits to fill a batch.")
    session_timeout_s: float = Field(6.0, description="Consumer-group session timeout; Tansu holds a join for half.")
    heartbeat_interval_s: float = Field(1.0, description="Consumer heartbeat; must be under a third of the session.")
    rebalance_timeout_s: float = Field(10.0, description="Consumer-group rebalance timeout.")
    metrics_port: int = Field(19102, description="Prometheus metrics of the stream worker.")

    @model_validator(mode="after")
    def _instance_window_divides(self) -> Self:
        if self.instance_window_s is not None and self.window_s % self.instance_window_s:
            raise ValueError(f"streams.instance_window_s ({self.instance_window_s}) must divide streams.window_s "
                             f"({self.window_s}): each service-wide window is merged from whole instance windows "
                             f"(e.g. 1, 2 or 5 for 10)")
        return self

    @property
    def instance_window(self) -> int:
        """Seconds of a per-instance window (`instance_window_s`, else `window_s`)."""
        return self.instance_window_s or self.window_s


class RecordSettings(Section):
    """The history in ClickHouse: the record sink (`foresight record`) and the decision log's spool."""

    group_id: str = Field("foresight-record", description="Consumer group of the record sink (its own, not the "
                          "stream worker's).")
    batch_max_rows: int = Field(50_000, ge=1, description="Rows per ClickHouse insert (and offset commit) at most.")
    flush_s: float = Field(1.0, gt=0, description="Longest wait to fill a batch before it is written.")
    metrics_port: int = Field(19112, description="Prometheus metrics of the record sink.")
    decision_spool_max_bytes: int = Field(
        64 * 1024 * 1024, ge=65_536, description="Disk spool of decisions and predictions that Kafka or "
                                                 "ClickHouse could not take; full = the publish raises.")
    decision_retry_s: float = Field(2.0, gt=0, description="Seconds between attempts to replay the decision spool.")


RAY_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9.\-\[\]:]+:\d+$|^auto$")


class RaySettings(Section):
    address: str | None = Field(None, description="`ray://host:port` of a cluster (Ray Client), `host:port` of "
                                "its GCS, or `auto` inside one (a RayJob); None starts a local head.")
    num_cpus: int = Field(2, description="CPUs the local head offers.")

    @model_validator(mode="after")
    def _address_is_one_ray_takes(self) -> Self:
        if self.address is not None and not RAY_ADDRESS.match(self.address):
            raise ValueError(f"ray.address {self.address!r}: use ray://host:port (e.g. KubeRay's "
                             "ray://<cluster>-head-svc:10001), host:port, or auto")
        return self


class ServingSettings(Section):
    host: str = Field(LOOPBACK, description="Serve HTTP bind address; loopback by default.")
    port: int = Field(18000, description="Serve HTTP port.")
    front: Literal["haproxy", "proxy"] = Field(
        "haproxy", description="What answers on `port`: `haproxy` (HAProxy, started by Serve, in front of ingress "
                               "replicas that serve HTTP themselves) or `proxy` (Serve's Python proxy, one more "
                               "Ray hop and about three times the CPU per request).")
    haproxy_binary: str = Field("haproxy", description="HAProxy executable (on PATH, or a path) for `front = haproxy`.")
    haproxy_log_target: str | None = Field(
        None, pattern=r"^tcp@[^\s:]+:\d+$",
        description="`tcp@host:port`: Serve's HAProxy sends its access log there over TCP (e.g. ingest's TCP syslog "
                    "port); none = a unix socket in its private directory that nothing reads.")
    internal_ports: str | None = Field(
        None, pattern=r"^\d+-\d+$",
        description="`FIRST-LAST` ports for Serve besides `port` (Serve's own proxy, HAProxy's stats page and "
                    "exporter, one per ingress replica and restart); none = `port`+10 to `port`+29.")
    token: SecretStr | None = Field(None, description="Bearer token required by the API when set.")
    token_file: Path | None = Field(None, description="File holding the serving token instead.")
    url: str | None = Field(None, description="Where clients (controllers, KEDA scaler) reach serving, e.g. "
                            "KubeRay's `http://<name>-serve-svc:8000`; none = `http://host:port`.")
    ingress_replicas: int = Field(1, ge=1, description="Replicas of the HTTP ingress deployment.")
    model_min_replicas: int = Field(1, ge=1, description="Serve autoscaling: fewest replicas per model deployment.")
    model_max_replicas: int = Field(1, ge=1, description="Serve autoscaling: most replicas per model deployment.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Serve autoscaling: requests in flight per model replica before it scales up.")
    registry_poll_s: float = Field(
        30.0, ge=0, description="Seconds between checks of the model registry for new versions; 0 = reload only.")
    forecast_history_max_minutes: int = Field(
        2880, ge=1, description="For a forecast by service name: the model's history length is read from "
                                "ClickHouse, up to this many minutes.")

    @property
    def internal_port_range(self) -> tuple[int, int]:
        """`internal_ports` as (first, last), both included; at least the 4 that one ingress replica needs."""
        if self.internal_ports is None:
            return self.port + 10, self.port + 29
        first, last = (int(p) for p in self.internal_ports.split("-"))
        if last - first < 3:
            raise ValueError(f"serving.internal_ports {self.internal_ports!r}: need at least 4 ports")
        return first, last


class AdapterSettings(Section):
    min_weight: int = Field(1, description="Never drain an instance to 0 from latency alone.")
    max_step: int = Field(128, description="Largest weight change per decision.")
    deadband: int = Field(4, description="Ignore changes smaller than this.")
    smoothing: float = Field(0.3, gt=0, le=1, description="Share of a new prediction in the weight aimed at "
                             "(an exponential moving average over rounds; 1 = the prediction alone): one short "
                             "window is a few dozen requests, so one round's p99 is noisy. A predicted 0 (drain) "
                             "is never smoothed.")
    unknown_weight: int = Field(100, ge=1, le=256, description="Weight an instance with no recent window goes back "
                                "to (step-limited) while its peers have windows: unknown, neither favoured nor "
                                "punished by its last prediction. A drained one (weight 0) stays drained.")
    dry_run: bool = Field(False, description="Decide and record, but do not touch HAProxy.")
    features_max_age_s: int = Field(300, description="Ignore feature windows older than this.")
    metrics_port: int = Field(19105, description="Prometheus metrics of the `foresight adapt` loop.")


class RegistrySettings(Section):
    """Service registry in etcd: instance keys under leases, leadership per service."""

    endpoint: str | None = Field(None, description="etcd client URL; none = http://127.0.0.1:<etcd.client_port>.")
    prefix: str = Field("/foresight", description="Key prefix: `<prefix>/services/<service>/instances/<instance>`, "
                        "`<prefix>/leaders/<service>/<role>`.")
    lease_ttl_s: int = Field(10, ge=2, description="Instance lease TTL; a dead instance leaves within it "
                             "(renewed every TTL/3).")
    leader_ttl_s: int = Field(10, ge=2, description="Leadership lease TTL; a standby takes over within it.")
    max_unavailable: float = Field(0.25, gt=0, le=1, description="Most instances of a service draining or drained "
                                   "at once, as a fraction (at least one; never the last ready one).")
    timeout_s: float = Field(3.0, gt=0, description="Timeout of one etcd request.")


class PoolServiceSettings(Section):
    """One service of the local instance pool: real backend processes that queue and saturate."""

    name: str = Field(description="Service name (registry key, HAProxy backend, nginx upstream).")
    capacity_rps: float = Field(50.0, gt=0, description="Requests/s one instance serves at saturation "
                                "(= workers / mean service time).")
    workers: int = Field(4, ge=1, description="Requests one instance serves at once; the rest queue.")
    service_time: Literal["exponential", "lognormal", "constant"] = Field(
        "exponential", description="Distribution of one request's service time (mean = workers / capacity).")
    service_time_sigma: float = Field(0.5, ge=0, description="Shape (sigma of log) of the lognormal service time.")
    startup_delay_s: float = Field(0.5, ge=0, description="Seconds an instance warms up before it registers.")
    replicas: int = Field(2, ge=0, description="Instances the pool starts with.")
    min_replicas: int = Field(1, ge=0, description="Fewest instances a replicas request may ask for.")
    max_replicas: int = Field(8, ge=1, description="Most instances a replicas request may ask for.")
    scenario: Path | None = Field(None, description="Fault scenario (YAML, `foresight faults generate`) its "
                                  "instances play; `#k` in it is the k-th instance the pool starts.")
    weight: int = Field(100, ge=0, le=256, description="Weight each instance registers with.")
    haproxy_port: int = Field(18081, description="HAProxy frontend port of this service.")
    nginx_port: int = Field(18082, description="nginx port of this service.")

    @property
    def mean_service_s(self) -> float:
        return self.workers / self.capacity_rps


class PoolSettings(Section):
    admin_port: int = Field(19110, description="`foresight pool` admin API (/v1/pools) and /metrics, on loopback.")
    drain_timeout_s: float = Field(30.0, gt=0, description="Longest wait for a draining instance to go idle before "
                                   "it is stopped anyway.")
    drain_quiet_s: float = Field(1.0, ge=0, description="A draining instance is idle once it got no request for "
                                 "this long and has none in flight.")
    stop_timeout_s: float = Field(10.0, gt=0, description="SIGTERM to SIGKILL for an instance being stopped.")
    retire_drained_after_s: float = Field(120.0, gt=0, description="An instance the health controller drained and "
                                          "did not re-admit within this long is stopped (its replacement already "
                                          "runs): kept, it would hold a place of `health.max_drained_fraction` "
                                          "forever. Above `health.horizon_s`, before which no re-admission "
                                          "happens. An operator's drain is never retired.")
    services: list[PoolServiceSettings] = Field(
        default_factory=lambda: [
            PoolServiceSettings(name="web"),
            # the closed-loop demo's service: small instances that take a while to start, so capacity must be
            # ordered ahead of the load
            PoolServiceSettings(name="shop", capacity_rps=20, workers=4, startup_delay_s=20, replicas=2,
                                min_replicas=1, max_replicas=10, haproxy_port=18084, nginx_port=18085),
        ], description="Services the pool runs.")

    def service(self, name: str) -> PoolServiceSettings | None:
        return next((svc for svc in self.services if svc.name == name), None)


class NginxSettings(Section):
    binary: str = Field("nginx", description="nginx executable (Debian nginx-light).")
    status_port: int = Field(18083, description="nginx stub_status (/status) and /healthz, on loopback.")


class SyncSettings(Section):
    """`foresight registry-sync`: balancer membership follows the registry."""

    metrics_port: int = Field(19111, description="Prometheus metrics of the registry sync.")
    del_timeout_s: float = Field(10.0, gt=0, description="Longest wait for a server in maintenance to lose its "
                                 "connections and queue before HAProxy's `del server`.")
    services: list[str] = Field(default_factory=list, description="Services to sync; empty = the pool's services.")
class PoolScalerSettings(Section):
    kind: Literal["pool"] = "pool"
    url: str = Field(f"http://{LOOPBACK}:19110", description="The pool's admin API (`foresight pool`).")


class RayServeScalerSettings(Section):
    kind: Literal["ray_serve"] = "ray_serve"
    dashboard_url: str = Field(f"http://{LOOPBACK}:8265", description="Ray's dashboard (Serve's REST API).")
    app: str = Field(description="Serve application, deployed with `external_scaler_enabled`.")
    deployment: str = Field(description="Deployment of that application whose replicas are scaled.")
    token_file: Path | None = Field(None, description="File with Ray's auth token (token authentication); "
                                                      "none = ~/.ray/auth_token when it exists.")


class KubernetesScalerSettings(Section):
    kind: Literal["kubernetes"] = "kubernetes"
    server: str | None = Field(None, description="API server URL; none = kubeconfig or the pod's service account.")
    namespace: str = Field("default", description="Namespace of the Deployment.")
    deployment: str = Field(description="Deployment whose `scale` subresource is set.")


class AutoscaledService(Section):
    """One service the autoscaler scales: its scaler, its replica policy and the policy's knobs."""

    name: str = Field(description="Service name, as in `features` and `/v1/forecast`.")
    scaler: PoolScalerSettings | RayServeScalerSettings | KubernetesScalerSettings = Field(
        discriminator="kind", description="Where its replicas are: `pool`, `ray_serve` or `kubernetes`.")
    policy: str = Field("predictive", description="predictive | reactive | static:N.")
    capacity_rps: float = Field(gt=0, description="Requests per second one replica serves.")
    startup_s: float = Field(ge=0, description="Seconds from a scale-up to a ready replica.")
    knobs: ScalingKnobs = Field(default_factory=predictive_knobs,
                                description="Knobs of `policy` and its guardrails: a table of overrides of the "
                                            "predictive preset (down only to the highest recommendation of the "
                                            "last 300 s, and by max(1, 10%) a minute).")
    reactive: ScalingKnobs = Field(default_factory=reactive_knobs,
                                   description="Knobs of the reactive policy (the fallback; the shadow HPA runs them "
                                               "without the feedback, as Kubernetes' HPA), overrides of HPA's "
                                               "defaults; min/max replicas and max_unavailable come from `knobs`.")

    @field_validator("knobs", mode="before")
    @classmethod
    def _over_predictive(cls, value: Any) -> Any:
        return {**predictive_knobs().model_dump(), **value} if isinstance(value, dict) else value

    @field_validator("reactive", mode="before")
    @classmethod
    def _over_reactive(cls, value: Any) -> Any:
        return {**reactive_knobs().model_dump(), **value} if isinstance(value, dict) else value


class AutoscalerSettings(Section):
    """`foresight autoscale`: features -> /v1/forecast -> replica policy -> guardrails -> scaler."""

    interval_s: float = Field(15.0, gt=0, description="Longest time between two decisions of a service.")
    poll_s: float = Field(1.0, gt=0, description="How often to look for a new closed feature window; a new one "
                                                 "triggers a decision at once.")
    stale_intervals: int = Field(4, ge=1, description="Predictions built on features older than this many "
                                                      "intervals are stale: the reactive fallback decides.")
    history_minutes: int = Field(1440, ge=1, le=10080, description="Minutes of rate history sent to `/v1/forecast` "
                                                                   "(at most a week, the API's limit).")
    serving_timeout_s: float = Field(3.0, gt=0, description="Timeout of each `/v1/forecast` call.")
    dry_run: bool = Field(False, description="Decide and record, do not touch the scalers.")
    metrics_port: int = Field(19108, description="Prometheus metrics of the `foresight autoscale` loop.")
    services: list[AutoscaledService] = Field(default_factory=list,
                                              description="Services to scale ([[autoscaler.services]] tables).")

    @model_validator(mode="after")
    def _unique(self) -> AutoscalerSettings:
        names = [s.name for s in self.services]
        if len(names) != len(set(names)):
            raise ValueError(f"autoscaler.services: a service is listed twice in {names}")
        return self


class KedaSettings(Section):
    """The KEDA external scaler (`foresight keda-scaler`): forecast-based metrics for KEDA/HPA."""

    host: str = Field(LOOPBACK, description="gRPC bind address of the KEDA external scaler; 0.0.0.0 in a pod.")
    port: int = Field(19106, description="gRPC port of the KEDA external scaler.")
    metrics_port: int = Field(19107, description="Prometheus metrics of the KEDA external scaler.")
    tls_cert_file: Path | None = Field(None, description="PEM certificate of the scaler's gRPC server; "
                                       "with `tls_key_file` turns TLS on (KEDA's `caCert` trusts it).")
    tls_key_file: Path | None = Field(None, description="PEM private key of `tls_cert_file`.")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA; when set, clients (KEDA's "
                                            "`tlsClientCert`) must present a certificate it signed.")
    forecast_max_age_s: float = Field(120.0, gt=0, description="A forecast older than this (serving away) is "
                                      "stale: the scaler then answers with observed load and says so.")
    observed_minutes: int = Field(5, ge=1, description="Fallback: the peak per-minute rate of the service's "
                                  "last this many whole minutes in ClickHouse `features`.")
    serving_timeout_s: float = Field(5.0, gt=0, description="Timeout of each `/v1/forecast` call.")
    stream_interval_s: float = Field(15.0, gt=0, description="`StreamIsActive` (external-push): seconds "
                                     "between checks; a change of activity is pushed at once.")


class PrometheusSettings(Section):
    port: int = Field(19090, description="Prometheus server of the local stack (UI and API).")
    scrape_interval_s: float = Field(5.0, gt=0, description="How often Prometheus scrapes every process.")
    retention: str = Field("2d", description="How long the stack's Prometheus keeps samples "
                           "(`--storage.tsdb.retention.time`).")
    slo_error_ratio: float = Field(0.005, gt=0, lt=1, description="Error budget of the SLO rules: the share of "
                                   "requests that may fail (5xx) through the stack's balancers.")


class DashboardSettings(Section):
    host: str = Field(LOOPBACK, description="Bind address of `foresight dashboard`; loopback by default.")
    port: int = Field(19120, description="Port of the live dashboard (one page per service).")
    token: SecretStr | None = Field(None, description="Token the dashboard requires when set "
                                    "(`?token=` once, then a cookie; masked in `foresight config`).")
    token_file: Path | None = Field(None, description="File holding the dashboard's token instead.")
    refresh_s: float = Field(2.0, gt=0, description="How often the page's event stream re-reads the record.")
    window_minutes: int = Field(60, gt=0, description="How much history the charts show.")


class HealthSettings(Section):
    services: list[str] = Field(default_factory=list, description="Services whose instances `foresight health` "
                                "drains before they fail (registry names); empty = none.")
    interval_s: float = Field(5.0, gt=0, description="Seconds between two rounds.")
    drain_at: Literal["model", "settings"] = Field("model", description="`model`: drain where the answering risk "
                                                   "model's training chose (its threshold and sustained seconds, "
                                                   "in `/v1/risk`'s `operating_point`), else at `drain_above` / "
                                                   "`drain_after`; `settings`: always at those.")
    drain_above: float = Field(0.8, gt=0, le=1, description="Drain a ready instance whose risk reaches this.")
    drain_after: int = Field(1, ge=1, description="Consecutive rounds at or above `drain_above` before a drain "
                             "(`foresight train --kind risk` stores the one it chose, in windows, in the manifest).")
    readmit_below: float = Field(0.3, ge=0, lt=1, description="Re-admit a drained one after `readmit_after` rounds "
                                 "at or below this risk (hysteresis: below `drain_above`).")
    readmit_after: int = Field(3, ge=1, description="Consecutive healthy rounds before re-admission, and never "
                               "before `horizon_s` has passed: a drained instance's risk is read without its traffic, "
                               "so it looks healthy whether it is or not; the failure it was drained for comes within "
                               "the horizon, or it was a false alarm.")
    max_drained_fraction: float = Field(0.25, gt=0, le=1, description="Most of a service's instances out of "
                                        "service at once (at least one; never the last ready one).")
    features_max_age_s: int = Field(30, gt=0, description="An instance whose newest window is older is unknown: "
                                    "neither drained nor re-admitted.")
    capacity_rps: float | None = Field(None, gt=0, description="Requests/s of an instance whose own capacity is "
                                       "not estimated yet (the guard estimates each from its served rate / busy "
                                       "share); none = such an instance leaves the overload unchecked.")
    capacity_margin: float = Field(1.15, ge=1, description="No drain (risk, or a predicted weight of 0) unless the "
                                   "instances left can serve the load times this; refused, the instance keeps a "
                                   "low weight for the share they cannot take.")
    min_utilisation: float = Field(0.25, gt=0, le=1, description="Capacity estimates read a lower busy share as "
                                   "this: an idle instance counts for a lower bound, not a noisy ratio.")
    cooldown_rounds: int = Field(6, ge=0, description="After a drain, rounds before the next drain of the service "
                                 "(the replacement arrives and the peers' windows settle first).")
    dry_run: bool = Field(False, description="Decide and record, do not touch the registry.")
    horizon_s: float = Field(60.0, gt=0, description="The risk label's horizon: an instance window is positive "
                             "when the instance fails within this many seconds after it.")
    heldout_seed_from: int = Field(1000, ge=1, description="Fault scenario seeds at or above this are the held-out "
                                   "set: recorded and evaluated on, refused by `foresight train --kind risk`.")
    metrics_port: int = Field(19113, description="Prometheus metrics of the `foresight health` loop.")

    def readmit_rounds(self, round_s: float) -> int:
        """Healthy rounds of `round_s` seconds before a drained instance is re-admitted: `readmit_after` rounds
        of `interval_s`, and at least the risk's horizon."""
        return max(1, round(self.readmit_after * self.interval_s / round_s), math.ceil(self.horizon_s / round_s))


class AuthSettings(Section):
    """The local stack's API token: `stack up` writes one (0600) into the state folder, every process
    with that state folder sends and requires it (serving API, ingest HTTP) unless told otherwise."""

    anonymous: bool = Field(False, description="Run the local stack without a token (anyone on this host may "
                            "call serving and ingest): the explicit opt-out of authentication by default.")
    token_file_name: str = Field("api-token", description="The stack's token file, inside the state folder.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FORESIGHT_",
        env_nested_delimiter="__",
        toml_file="foresight.toml",
        extra="forbid",
    )

    state_dir: Path = Field(Path(".foresight"), description="Data, logs and pid files of the local stack.")
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    etcd: EtcdSettings = EtcdSettings()
    haproxy: HAProxySettings = HAProxySettings()
    demo: DemoSettings = DemoSettings()
    ingest: IngestSettings = IngestSettings()
    streams: StreamSettings = StreamSettings()
    record: RecordSettings = RecordSettings()
    ray: RaySettings = RaySettings()
    serving: ServingSettings = ServingSettings()
    adapter: AdapterSettings = AdapterSettings()
    registry: RegistrySettings = RegistrySettings()
    pool: PoolSettings = PoolSettings()
    nginx: NginxSettings = NginxSettings()
    sync: SyncSettings = SyncSettings()
    autoscaler: AutoscalerSettings = AutoscalerSettings()


    keda: KedaSettings = KedaSettings()
    auth: AuthSettings = AuthSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    dashboard: DashboardSettings = DashboardSettings()
    health: HealthSettings = HealthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def state(self) -> Path:
        return self.state_dir.resolve()

    @property
    def token_file(self) -> Path:
        return self.state / self.auth.token_file_name

    @model_validator(mode="after")
    def _stack_token(self) -> Self:
        """The stack's token for serving and ingest HTTP, when neither names a token of its own."""
        self.use_stack_token()
        return self

    def use_stack_token(self) -> None:
        """Take the token of `token_file` (if there) for serving and ingest HTTP unless set otherwise."""
        if self.auth.anonymous:
            return
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ValueError(f"stack token {self.token_file}: {exc.strerror or exc}") from exc
        if token and self.serving.token is None and self.serving.token_file is None:
            self.serving.token = SecretStr(token)
        if token and self.ingest.http_token is None and self.ingest.http_token_file is None:
            self.ingest.http_token = SecretStr(token)

    @property
    def haproxy_socket(self) -> Path:
        """The local stack's runtime API socket (its HAProxy always opens it)."""
        return self.state / self.haproxy.socket_name

    @property
    def haproxy_runtime(self) -> RuntimeAddress:
        """Where the runtime API's clients connect: `haproxy.runtime_address` when set, else the socket."""
        if self.haproxy.runtime_address:
            return host_port(self.haproxy.runtime_address)
        return self.haproxy_socket

    @property
    def spool_dir(self) -> Path:
        return self.state / "ingest" / "spool"

    @property
    def decision_spool_dir(self) -> Path:
        return self.state / "lb_adapters" / "decision-spool"

    @property
    def checkpoint_dir(self) -> Path:
        return self.state / "ingest" / "checkpoints"

    @property
    def registry_endpoint(self) -> str:
        return self.registry.endpoint or f"http://{LOOPBACK}:{self.etcd.client_port}"

    @property
    def serving_token(self) -> str | None:
        """The serving API's bearer token in clear, for the clients that send it."""
        return self.serving.token.get_secret_value() if self.serving.token else None

    @property
    def ingest_token(self) -> str | None:
        """Ingest HTTP's bearer token in clear, for the clients that send it."""
        return self.ingest.http_token.get_secret_value() if self.ingest.http_token else None

    @property
    def dashboard_token(self) -> str | None:
        """The dashboard's token in clear, for the page that checks it."""
        return self.dashboard.token.get_secret_value() if self.dashboard.token else None

    @property
    def serving_url(self) -> str:
        return self.serving.url or f"http://{self.serving.host}:{self.serving.port}"


class ConfigFileError(ValueError):
    """The configuration file named explicitly does not exist."""


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config` (or `$FORESIGHT_CONFIG`, or ./foresight.toml when present)."""
    named = config or (Path(os.environ["FORESIGHT_CONFIG"]) if os.environ.get("FORESIGHT_CONFIG") else None)
    if named is not None and not named.is_file():
        raise ConfigFileError(f"configuration file {named} not found; create it or drop --config/FORESIGHT_CONFIG")
    path = named or Path("foresight.toml")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return _FromFile(**overrides)
