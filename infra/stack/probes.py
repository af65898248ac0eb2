"""Readiness probes: each asks its component a real question, not just whether a port is open."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx

Probe = Callable[[], bool]


def http_ok(url: str, expect: str | None = None) -> Probe:
    def probe() -> bool:
        try:
            resp = httpx.get(url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and (expect is None or expect in resp.text)

    return probe


def kafka_metadata(bootstrap: str) -> Probe:
    """A Kafka ApiVersions + Metadata round trip through kafka-python."""

    def probe() -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000, client_id="foresight-probe")
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


def haproxy_runtime(socket_path: Path) -> Probe:
    """`show info` on the runtime API socket answers with HAProxy's name."""

    def probe() -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(socket_path))
                sock.sendall(b"show info\n")
                data = sock.recv(4096)
        except OSError:
            return False
        return b"Name: HAProxy" in data

    return probe


def all_of(*probes: Probe) -> Probe:
    return lambda: all(p() for p in probes)
