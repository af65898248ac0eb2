"""UDP syslog receiver: each datagram split into lines, each line handed to a callback.

UDP because that is what HAProxy's `log host:port` sends: it never blocks the proxy, at the cost of
loss when the receiver falls behind, hence the larger receive buffer. (TCP framing comes later.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from ingest import metrics

log = logging.getLogger(__name__)

LineCallback = Callable[[bytes], None]
RCVBUF_BYTES = 4 * 1024 * 1024  # absorbs bursts while the loop is busy; the kernel may cap it (rmem_max)


class _SyslogProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_line: LineCallback) -> None:
        self.on_line = on_line

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        metrics.DATAGRAMS_RECEIVED.inc()
        for line in data.split(b"\n"):
            if not line.strip(b"\r\x00 "):
                continue  # the trailing newline, or padding
            try:
                self.on_line(line)
            except Exception:  # one bad line must not stop the receiver
                log.exception("syslog line handler failed")

    def error_received(self, exc: Exception) -> None:
        log.warning("syslog socket error: %r", exc)


class SyslogUDPSource:
    """Listens on `host:port` once `start()`ed; `port=0` picks a free port (see `address`)."""

    def __init__(self, host: str, port: int, on_line: LineCallback, *, rcvbuf: int = RCVBUF_BYTES) -> None:
        self.host = host
        self.port = port
        self.on_line = on_line
        self.rcvbuf = rcvbuf
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _SyslogProtocol(self.on_line), sock=sock)

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise RuntimeError("not started")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


async def serve_syslog(host: str, port: int, on_line: LineCallback) -> SyslogUDPSource:
    """A started `SyslogUDPSource`; `close()` it when done."""
    source = SyslogUDPSource(host, port, on_line)
    await source.start()
    return source
