"""The serving front's Serve environment and the wrapper that keeps Serve's HAProxy on loopback."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.core.ports import free_port
from infra.core.settings import ServingSettings
from serving.front import EXPORTER, FIRST_REPLICA, PROXY, REQUEST_PATH_ENV, STATS, loopback_wrapper, serve_env

HAPROXY_CONFIG = """global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend prometheus
    bind :{exporter}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend http_frontend
    bind 127.0.0.1:{api}
    http-request return status 200 content-type text/plain string ok
listen stats
  bind *:{stats}
  stats enable
"""


def test_internal_ports_default_to_a_block_above_the_api_port_and_are_checked() -> None:
    assert ServingSettings(port=18300).internal_port_range == (18310, 18329)
    assert ServingSettings(internal_ports="20000-20005").internal_port_range == (20000, 20005)
    with pytest.raises(ValueError, match="at least 4"):
        _ = ServingSettings(internal_ports="20000-20002").internal_port_range
    with pytest.raises(ValidationError):
        ServingSettings(internal_ports="20000")


def test_haproxy_front_puts_every_serve_port_in_the_internal_range() -> None:
    env = serve_env(ServingSettings(port=18000, internal_ports="21000-21019"))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == str(21000 + PROXY)
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == str(21000 + STATS)
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == str(21000 + EXPORTER)
    # Serve hands replicas ports from range(MIN, MAX): the last configured port is included.
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == (
        str(21000 + FIRST_REPLICA), "21020")
    assert REQUEST_PATH_ENV.items() <= env.items()


def test_proxy_front_only_shortens_the_request_path() -> None:
    assert serve_env(ServingSettings(front="proxy")) == REQUEST_PATH_ENV


def test_a_missing_haproxy_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-haproxy"):
        serve_env(ServingSettings(haproxy_binary="no-such-haproxy"))


def test_the_wrapper_pins_every_bind_to_the_serving_host_and_runs_haproxy(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(exporter=21002, api=21000, stats=21001))
    wrapper = loopback_wrapper(ServingSettings(host="127.0.0.1"))
    checked = subprocess.run([str(wrapper), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr  # HAProxy itself accepted the rewritten config
    binds = [line.strip() for line in config.read_text().splitlines() if line.strip().startswith("bind")]
    assert binds == ["bind 127.0.0.1:21002", "bind 127.0.0.1:21000", "bind 127.0.0.1:21001"]


def test_on_a_cluster_serve_finds_haproxy_on_the_head_node_itself() -> None:
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in serve_env(ServingSettings(haproxy_binary="no-such-haproxy"),
                                                             local_head=False)
    given = serve_env(ServingSettings(haproxy_binary="/opt/haproxy/sbin/haproxy"), local_head=False)
    assert given["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/opt/haproxy/sbin/haproxy"


def test_the_haproxy_dir_is_private(tmp_path: Path) -> None:
    from serving.front import UnsafeDirectory, private_dir

    fresh = private_dir(tmp_path / "new")
    assert fresh.stat().st_mode & 0o777 == 0o700
    readable = tmp_path / "readable"
    readable.mkdir(mode=0o755)
    readable.chmod(0o755)
    assert private_dir(readable).stat().st_mode & 0o777 == 0o700  # ours, closed
    writable = tmp_path / "writable"
    writable.mkdir()
    writable.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="others may have put files"):
        private_dir(writable)
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        private_dir(link)


def test_a_haproxy_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    import os

    from serving.front import UnsafeDirectory, private_dir

    if os.getuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeDirectory, match="belongs to uid 65534"):
        private_dir(theirs)


def test_replica_grpc_hook_pins_all_interfaces_to_loopback() -> None:
    import grpc
    import psutil
    from ray.serve._private import replica

    from serving.compat.ray_serve import pin_replica_grpc_to_loopback

    original = replica.add_port_to_grpc_server
    try:
        pin_replica_grpc_to_loopback()
        wrapped = replica.add_port_to_grpc_server
        assert wrapped is not original
        pin_replica_grpc_to_loopback()
        assert replica.add_port_to_grpc_server is wrapped  # idempotent: wrapped once
        server = grpc.server(ThreadPoolExecutor(1))
        port = replica.add_port_to_grpc_server(server, "[::]:0")
        server.start()
        try:
            mine = [c for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN
                    and c.laddr.port == port]
            assert [c.laddr.ip.removeprefix("::ffff:") for c in mine] == ["127.0.0.1"]  # v4, or v4-mapped
        finally:
            server.stop(0)
    finally:
        replica.add_port_to_grpc_server = original


def test_serve_haproxy_access_log_goes_over_tcp_when_asked(tmp_path: Path) -> None:
    import shutil

    default = serve_env(ServingSettings())["RAY_SERVE_HAPROXY_LOG_TARGET"]
    assert default.endswith("access-log.sock")  # a unix socket: no UDP socket on all interfaces
    target = serve_env(ServingSettings(haproxy_log_target="tcp@127.0.0.1:15515"))["RAY_SERVE_HAPROXY_LOG_TARGET"]
    assert target == "tcp@127.0.0.1:15515"
    with pytest.raises(ValidationError):
        ServingSettings(haproxy_log_target="127.0.0.1:514")
    if shutil.which("haproxy") is None:
        pytest.skip("needs haproxy to check the log line")
    config = tmp_path / "log.cfg"
    config.write_text(f"global\n    log {target} local0 info\ndefaults\n    mode http\n    log global\n"
                      "    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n"
                      f"frontend f\n    bind 127.0.0.1:{free_port()}\n")
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
