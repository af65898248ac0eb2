"""Readiness probes: each asks its component a real question, not just whether a port is open."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from infra.core.settings import KafkaSettings, RuntimeAddress

Probe = Callable[[], bool]


def http_ok(url: str, expect: str | None = None) -> Probe:
    def probe() -> bool:
        try:
            resp = httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and (expect is None or expect in resp.text)

    return probe


def kafka_metadata(kafka: KafkaSettings) -> Probe:
    """A Kafka ApiVersions + Metadata round trip through kafka-python (with the cluster's SASL/TLS)."""

    def probe() -> bool:
        from kafka.errors import KafkaError

        from infra.core.kafka_admin import kafka_admin_client

        try:
            admin = kafka_admin_client(kafka, request_timeout_ms=2000, client_id="foresight-probe")
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    return probe


def haproxy_runtime(address: RuntimeAddress) -> Probe:
    """`show info` on the runtime API (unix socket or TCP) answers with HAProxy's name."""

    def probe() -> bool:
        from lb_adapters.actuators.haproxy import HAProxyError, HAProxyRuntime

        try:
            return "Name: HAProxy" in HAProxyRuntime(address, timeout_s=2.0).command("show info")
        except (HAProxyError, OSError):
            return False

    return probe


def all_of(*probes: Probe) -> Probe:
    return lambda: all(p() for p in probes)
