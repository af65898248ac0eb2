"""HAProxy's runtime API over TCP (`haproxy.runtime_address`): `adapt` and `registry-sync` in their own pod
talk to an HAProxy elsewhere. Checked against a real HAProxy on a free loopback port (no stack)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.core.ports import free_port
from infra.core.settings import Settings
from infra.stack import probes
from infra.stack.components import haproxy
from lb_adapters.actuators.haproxy import HAProxyError, HAProxyRuntime


def test_the_address_is_the_socket_unless_set(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path)
    assert s.haproxy_runtime == tmp_path / "haproxy.sock"
    s = Settings(state_dir=tmp_path, haproxy={"runtime_address": "haproxy-runtime.foresight:9999"})
    assert s.haproxy_runtime == ("haproxy-runtime.foresight", 9999)
    assert s.haproxy_socket == tmp_path / "haproxy.sock"  # the local stack's HAProxy keeps its socket
    assert Settings(haproxy={"runtime_address": "[::1]:9999"}).haproxy_runtime == ("::1", 9999)
    for bad in ("haproxy", "haproxy:", ":9999", "haproxy:http", "haproxy:70000"):
        with pytest.raises(ValidationError, match="host:port"):
            Settings(haproxy={"runtime_address": bad})


@pytest.fixture
def tcp_haproxy(tmp_path: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("haproxy not found: `./run setup` installs Debian's haproxy")
    port, backend_port = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""global
    stats socket ipv4@127.0.0.1:{port} level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
backend web
    balance roundrobin
    server a 127.0.0.1:{backend_port} weight 100
""")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not probes.haproxy_runtime(("127.0.0.1", port))():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "HAProxy's TCP runtime API never answered"
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_weights_and_membership_over_tcp(tcp_haproxy: tuple[str, int]) -> None:
    runtime = HAProxyRuntime(tcp_haproxy)
    assert runtime.weights("web") == {"a": 100}
    runtime.set_weight("web", "a", 37)
    assert runtime.weights("web") == {"a": 37}
    runtime.set_server_state("web", "a", "drain")
    assert runtime.servers("web")["a"][3] & 0x08


def test_nothing_there_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(HAProxyError, match=f"127.0.0.1:{port}"):
        HAProxyRuntime(("127.0.0.1", port), timeout_s=1).command("show info")
    assert not probes.haproxy_runtime(("127.0.0.1", port))()


def test_the_local_stack_opens_the_tcp_runtime_api_when_set(tmp_path: Path) -> None:
    port = free_port()
    s = Settings(state_dir=tmp_path, haproxy={"runtime_address": f"127.0.0.1:{port}"})
    component = haproxy(s)
    component.prepare()
    cfg = (tmp_path / "haproxy" / "haproxy.cfg").read_text()
    assert f"stats socket ipv4@127.0.0.1:{port} level admin" in cfg
    assert f"stats socket {tmp_path / 'haproxy.sock'}" in cfg
    assert port in component.tcp_ports
    plain = Settings(state_dir=tmp_path / "plain")
    haproxy(plain).prepare()
    assert "ipv4@" not in (tmp_path / "plain" / "haproxy" / "haproxy.cfg").read_text()
    if shutil.which("haproxy"):
        check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy" / "haproxy.cfg")],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
