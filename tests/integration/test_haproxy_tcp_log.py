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
        proc = subprocess.Popen(component.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        got: list[bytes] = []
        source = SyslogTCPSource("127.0.0.1", first + 3, got.append)
        try:
            deadline = time.monotonic() + 20
            sent = 0
            while sent < 2 and time.monotonic() < deadline:  # ingest not listening yet: HAProxy's ring holds these
                try:
                    await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{first}/while-down-{sent}", timeout=2)
                    sent += 1
                except httpx.HTTPError:
                    await asyncio.sleep(0.3)
            assert sent == 2, "HAProxy never answered"
            await source.start()
            await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{first}/tcp-log-check", timeout=2)
            while time.monotonic() < deadline and len(got) < 3:
                await asyncio.sleep(0.1)
            return got
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            await source.close()

    try:
        messages = asyncio.run(run())
    finally:
        backend.shutdown()
    parsed = [parse_haproxy_line(m) for m in messages]
    assert all(isinstance(p, AccessEvent) and p.status == 200 for p in parsed), parsed
    # the lines logged while nothing listened arrive too, in order, once the receiver is up
    assert [p.route for p in parsed if isinstance(p, AccessEvent)] == ["/while-down-0", "/while-down-1",
                                                                       "/tcp-log-check"]
