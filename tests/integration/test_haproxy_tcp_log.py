"""The stack's HAProxy sends its access logs over TCP (ring buffer, octet counting) to ingest's TCP syslog.

Own HAProxy and TCP syslog receiver on free loopback ports, from the stack's own config builder.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from infra.core.ports import free_ports
from infra.core.settings import Settings
from infra.stack.components import haproxy
from ingest.parsers.haproxy import parse_haproxy_line
from ingest.schemas import AccessEvent
from ingest.sources.syslog_tcp import SyslogTCPSource


class Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (./run setup installs it)")
def test_stack_haproxy_logs_reach_the_tcp_syslog_port(tmp_path: Path) -> None:
    first = free_ports(5)
    s = Settings(state_dir=tmp_path, haproxy={"frontend_port": first, "exporter_port": first + 1},
                 ingest={"syslog_port": first + 2, "syslog_tcp_port": first + 3}, demo={"ports": [first + 4]})
    component = haproxy(s)
    assert component.prepare is not None
    component.prepare()
    config = (tmp_path / "haproxy" / "haproxy.cfg").read_text()
    assert f"server ingest 127.0.0.1:{first + 3} log-proto octet-count" in config
    assert f":{first + 2}" not in config  # nothing goes to the UDP port any more

    backend = ThreadingHTTPServer(("127.0.0.1", first + 4), Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()

    async def run() -> list[bytes]:
        got: list[bytes] = []
        source = SyslogTCPSource("127.0.0.1", first + 3, got.append)
        await source.start()
        proc = subprocess.Popen(component.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            sent = 0
            while time.monotonic() < deadline and not got:
                try:
                    await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{first}/tcp-log-check", timeout=2)
                    sent += 1
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
            assert sent, "HAProxy never answered"
            await asyncio.sleep(0.5)
            return got
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            await source.close()

    try:
        messages = asyncio.run(run())
    finally:
        backend.shutdown()
    assert messages, "no log line reached the TCP syslog port"
    parsed = parse_haproxy_line(messages[0])
    assert isinstance(parsed, AccessEvent), parsed
    assert parsed.route == "/tcp-log-check" and parsed.status == 200
