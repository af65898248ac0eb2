"""A private copy of the membership path on free loopback ports under one folder: etcd, HAProxy,
nginx, the pool and the registry sync, built by the stack's own component builders from a settings
object of its own. Used by `foresight bench registry` and the integration tests; never touches
the shared stack (own ports, own state folder, own registry prefix, HAProxy logs to a dead port).
With `private_clickhouse`, ClickHouse too is the rig's own server (component `clickhouse`), and Kafka a
dead port (decisions of the pool and the sync are then dropped, counted)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from infra.core.kafka_admin import kafka_admin_client, kafka_consumer
from infra.core.ports import free_port, free_ports
from infra.core.settings import (
    ClickHouseSettings,
    DemoSettings,
    EtcdSettings,
    HAProxySettings,
    IngestSettings,
    KafkaSettings,
    NginxSettings,
    PoolServiceSettings,
    PoolSettings,
    RegistrySettings,
    Settings,
    SyncSettings,
)
from infra.stack import components
from infra.stack.components import Component
from infra.stack.process import ProcessRecord, spawn, stop


def wait_until(what: str, cond: Callable[[], bool], timeout_s: float = 60.0, every_s: float = 0.05) -> None:
    """Poll `cond` until true; RuntimeError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every_s)


SECTIONS = ("kafka", "clickhouse", "etcd", "haproxy", "demo", "ingest", "pool", "nginx", "sync", "registry")


def rig_settings(folder: Path, service: PoolServiceSettings | None = None, lease_ttl_s: int = 3,
                 drain_quiet_s: float = 1.0, private_clickhouse: bool = False) -> Settings:
    first = free_ports(15)
    port = iter(range(first, first + 15))
    svc = (service or PoolServiceSettings(name="web", replicas=1, startup_delay_s=0.2, capacity_rps=200,
                                          workers=8, max_replicas=8))
    svc = svc.model_copy(update={"haproxy_port": next(port), "nginx_port": next(port)})
    run = secrets.token_hex(4)
    # decisions go to a topic and a ClickHouse database of the rig's own on the shared servers, or on the
    # rig's own ClickHouse (and to no Kafka: nothing listens on that port)
    private = {"tcp_port": next(port), "http_port": next(port)} if private_clickhouse else {}
    dead_kafka = {"bootstrap_servers": f"127.0.0.1:{next(port)}"} if private_clickhouse else {}
    return Settings(
        state_dir=folder,
        clickhouse=ClickHouseSettings(database=f"foresight_rig_{run}", **private),
        kafka=KafkaSettings(**{f"topic_{t}": f"fs.rig-{run}.{t}" for t in ("access", "metrics", "dlq", "features",
                                                                          "decisions")}, **dead_kafka),
        etcd=EtcdSettings(client_port=next(port), peer_port=next(port), metrics_port=next(port)),
        haproxy=HAProxySettings(frontend_port=next(port), exporter_port=next(port)),
        demo=DemoSettings(ports=[next(port), next(port)]),  # nothing listens there: the demo backend stays down
        ingest=IngestSettings(syslog_port=next(port)),  # HAProxy's logs go nowhere, not to the shared ingest
        pool=PoolSettings(admin_port=next(port), drain_quiet_s=drain_quiet_s, drain_timeout_s=15, services=[svc]),
        nginx=NginxSettings(status_port=next(port)),
        sync=SyncSettings(metrics_port=free_port(), del_timeout_s=3),
        registry=RegistrySettings(prefix=f"/rig-{run}", lease_ttl_s=lease_ttl_s, leader_ttl_s=3),
    )


class Rig:
    """Start and stop the rig's processes by component name; `close()` stops what still runs."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.svc = s.pool.services[0]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
        self.env.update({"FORESIGHT_STATE_DIR": str(s.state), "PYTHONUNBUFFERED": "1"})
        for name in SECTIONS:  # children read the same settings (nested sections as JSON)
            self.env[f"FORESIGHT_{name.upper()}"] = json.dumps(getattr(s, name).model_dump(mode="json"))
        built = {c.name: c for c in [components.etcd(s), components.haproxy(s), components.nginx(s),
                                     components.pool(s), components.registry_sync(s), components.clickhouse(s)]}
        self.components: dict[str, Component] = built
        self.records: dict[str, ProcessRecord] = {}
        self._database = False

    def ensure_decisions_topic(self) -> bool:
        """The rig's own decisions topic on the shared broker; False when no broker answers (the sync
        and pool then count their decisions as dropped; membership does not depend on Kafka)."""
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        try:
            admin = kafka_admin_client(self.s.kafka, request_timeout_ms=3000)
        except (KafkaError, OSError):
            return False
        try:
            admin.create_topics([NewTopic(self.s.kafka.topic_decisions, 1, 1)])
        except TopicAlreadyExistsError:
            pass
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
        return True

    def ensure_database(self) -> bool:
        """Migrate the rig's own ClickHouse database (dropped by `close()`); False when ClickHouse does not
        answer (the decisions then wait in the rig's spool, which goes with its folder)."""
        from infra.core.db import migrate

        try:
            migrate(self.s.clickhouse)
        except Exception:  # ClickHouse away: the membership path does not depend on it
            return False
        self._database = True
        return True

    def decision_rows(self) -> list[tuple[str, str, str]]:
        """(actuator, action, target) of every row in the rig's ClickHouse `decisions`."""
        from infra.core.db import client

        cl = client(self.s.clickhouse)
        try:
            rows = cl.execute(f"SELECT actuator, action, target FROM {self.s.clickhouse.database}.decisions FINAL")
            return [(str(a), str(b), str(c)) for a, b, c in rows]
        finally:
            cl.disconnect()

    def decisions(self, timeout_s: float = 5.0) -> list[dict[str, object]]:
        """Every decision on the rig's topic so far."""
        consumer = kafka_consumer(self.s.kafka, self.s.kafka.topic_decisions, auto_offset_reset="earliest",
                                  enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000))
        try:
            return [json.loads(m.value) for m in consumer]
        finally:
            consumer.close()

    def start(self, *names: str, timeout_s: float = 30.0) -> None:
        for name in names:
            c = self.components[name]
            c.prepare()
            record = spawn(name, c.argv, self.s.state / "logs" / f"{name}.log", self.env, cwd=self.s.state)
            self.records[name] = record
            deadline = time.monotonic() + timeout_s
            while not c.probe():
                if record.process() is None:
                    raise RuntimeError(f"{name} exited during start-up; see {record.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s; see {record.log}")
                time.sleep(0.1)

    def stop(self, name: str) -> None:
        record = self.records.pop(name, None)
        if record is not None:
            stop(record)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        record = self.records[name]
        os.kill(record.pid, sig)

    def close(self) -> None:
        own_clickhouse = "clickhouse" in self.records  # its data goes with the rig's folder: nothing to drop
        for name in reversed(list(self.records)):
            self.stop(name)
        if self._database and not own_clickhouse:
            from infra.core.db import client

            cl = client(self.s.clickhouse)
            try:
                cl.execute(f"DROP DATABASE IF EXISTS {self.s.clickhouse.database}")
            finally:
                cl.disconnect()

    # -- what tests and the bench look at ---------------------------------------------------------
    @property
    def etcd_url(self) -> str:
        return self.s.registry_endpoint

    @property
    def haproxy_url(self) -> str:
        return f"http://127.0.0.1:{self.svc.haproxy_port}/"

    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.svc.nginx_port}/"

    @property
    def pool_url(self) -> str:
        return f"http://127.0.0.1:{self.s.pool.admin_port}/v1/pools/{self.svc.name}"

    def scale(self, replicas: int) -> dict[str, object]:
        resp = httpx.put(f"{self.pool_url}/replicas", json={"replicas": replicas}, timeout=10)
        resp.raise_for_status()
        data: dict[str, object] = resp.json()
        return data

    def pool_status(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(self.pool_url, timeout=10).json()
        return data

    def nginx_settled(self) -> bool:
        """True when a single nginx worker takes connections: no worker of an earlier configuration is left.
        After a reload the master starts the new worker and tells the old one to stop accepting only about
        100 ms later (more on a busy host; it then calls itself "worker process is shutting down"), so for a
        while after the new upstreams first answer, a request may still meet the old ones. The template runs
        `worker_processes 1`."""
        record = self.records.get("nginx")
        master = record.process() if record is not None else None
        if master is None:
            return False
        accepting = 0
        for child in master.children():
            try:
                title = child.cmdline()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # an old worker that has just exited
            accepting += bool(title) and title[0] == "nginx: worker process"
        return accepting == 1

    def nginx_upstream(self) -> str:
        path = self.s.state / "nginx" / "upstreams" / f"{self.svc.name}.conf"
        return path.read_text() if path.exists() else ""

    def sync_metric(self, name: str, **labels: str) -> float:
        """Sum of one sample family of the sync's /metrics matching `labels`."""
        text = httpx.get(f"http://127.0.0.1:{self.s.sync.metrics_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


class ClientLoop:
    """A bounded client: one request at a time through a balancer, until `stop()` or `max_requests`.
    Records when each instance first answered and every failure (status >= 500 or no answer)."""

    def __init__(self, url: str, max_requests: int = 100_000, pause_s: float = 0.005) -> None:
        import threading

        self.url, self.max_requests, self.pause_s = url, max_requests, pause_s
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.failures: list[tuple[float, str]] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"client-{url}", daemon=True)

    def start(self) -> ClientLoop:
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set() and self.sent < self.max_requests:
                self.sent += 1
                try:
                    resp = client.get(self.url)
                    now = time.monotonic()
                    if resp.status_code >= 500:
                        self.failures.append((now, f"HTTP {resp.status_code}"))
                    else:
                        name = resp.text.strip()
                        self.first_seen.setdefault(name, now)
                        self.last_seen[name] = now
                        self.counts[name] = self.counts.get(name, 0) + 1
                except httpx.HTTPError as exc:
                    self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


class RegistryClock:
    """When each instance key first appeared (`put`) and last changed state, from a watch on the rig's etcd."""

    def __init__(self, s: Settings, service: str) -> None:
        import threading

        from infra.core.service_registry import Registry

        self.registry = Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s)
        self.service = service
        self.registered: dict[str, float] = {}
        self.state_at: dict[tuple[str, str], float] = {}
        self.deleted: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="registry-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for ev in self.registry.watch(self.service):
            now = time.monotonic()
            if ev.kind == "put" and ev.entry is not None and ev.entry.record is not None:
                self.registered.setdefault(ev.entry.instance, now)
                self.state_at.setdefault((ev.entry.instance, ev.entry.record.state), now)
            elif ev.kind == "delete" and ev.entry is not None:
                self.deleted.setdefault(ev.entry.instance, now)

    def close(self) -> None:
        self.registry.close()
