"""TCP syslog receiver (RFC 6587): each framed message handed to a callback, frame by frame.

Why TCP next to UDP: no silent loss when a burst outruns the receiver. The kernel's flow control
pushes back on the sender instead (a handler that returns an awaitable is awaited before the
connection is read further), and HAProxy's ring buffer absorbs that on its side.

Both framings of RFC 6587 are accepted on the same connection, decided frame by frame:
- octet counting, `LEN SP MSG` (what a HAProxy `ring` server with `log-proto octet-count` sends);
- non-transparent framing, `MSG LF` (what HAProxy 2.6 `log tcp@host:port` sends: its implicit
  ring uses the default `log-proto legacy`).
A frame that starts with a non-zero digit, up to 10 digits and a space is octet-counted; anything
else ends at LF. The message keeps its syslog header (RFC 3164, RFC 5424, or none): the parsers
strip it (`ingest.parsers.syslog_framing`). A frame over `max_message_bytes` is dropped and
reported (`on_oversize`), and the stream stays in step: an octet-counted frame is skipped by its
length, a line up to its LF. The connection and the server carry on.

A connection is a delivery unit: its identical messages are numbered apart (`Occurrences`), so a
sender that reconnects and sends again from the same message gets the same ids. Twins sent over
two connections share an id (merged), and a reconnect that resends from a later message numbers
its repeats lower: they take an earlier twin's id (dropped, or merged if that one was never sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from infra.core import retry
from infra.core.settings import IngestSettings
from ingest import metrics
from ingest.parsers.auto import parser_for
from ingest.parsers.base import LineParser, Occurrences, now_ms, reject
from ingest.runtime import run_until_signalled
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.base import EventSink

log = logging.getLogger(__name__)

MessageHandler = Callable[[bytes], Awaitable[None] | None]
HandlerFactory = Callable[[], MessageHandler]  # a connection's own handler, made when it opens
OversizeHandler = Callable[[int | None, bytes], None]  # declared length (None: unframed line), first bytes
MAX_MESSAGE_BYTES = 64 * 1024  # HAProxy's `len` tops out at 65535
MAX_LEN_DIGITS = 10
READ_BYTES = 64 * 1024
PREFIX_BYTES = 256
SOURCE = "syslog_tcp"
_OCTET_COUNT = re.compile(rb"[1-9][0-9]{0,%d} " % (MAX_LEN_DIGITS - 1))

CONNECTIONS = Counter("foresight_ingest_syslog_tcp_connections", "TCP syslog connections accepted.")
MESSAGES = Counter("foresight_ingest_syslog_tcp_messages", "TCP syslog messages received.")
OVERSIZED = Counter("foresight_ingest_syslog_tcp_oversized", "TCP syslog frames dropped for their size.")


class FrameDecoder:
    """Splits one TCP byte stream into syslog messages; feed it bytes as they arrive."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES, on_oversize: OversizeHandler | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.on_oversize = on_oversize
        self._buf = bytearray()
        # while dropping an oversized frame: bytes still to drop (octet-counted) or -1 (up to LF)
        self._skip = 0
        self._skip_len: int | None = None
        self._skip_prefix = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        pos = self._decode(out)
        del self._buf[:pos]
        return out

    def finish(self) -> list[bytes]:
        """At end of stream, an unterminated last line is still a message (RFC 6587 allows it)."""
        rest, self._buf = bytes(self._buf), bytearray()
        if self._skip:
            self._skip = 0
            self._report()
            return []
        if _OCTET_COUNT.match(rest):
            log.info("syslog tcp: stream ended inside an octet-counted frame (%d bytes of it dropped)", len(rest))
            return []
        msg = rest.rstrip(b"\r")
        return [msg] if msg else []

    def _decode(self, out: list[bytes]) -> int:
        buf, pos, limit = self._buf, 0, self.max_message_bytes
        while True:
            if self._skip:
                pos = self._drop(pos)
                if self._skip:
                    return pos
            if pos >= len(buf):
                return pos
            if 0x31 <= buf[pos] <= 0x39:  # 1-9: maybe `LEN SP`
                sp = buf.find(b" ", pos, pos + MAX_LEN_DIGITS + 1)  # none yet: waits below like a line
                if sp > pos and buf[pos:sp].isdigit():
                    n = int(buf[pos:sp])
                    if n > limit:
                        pos, self._skip, self._skip_len = sp + 1, n, n
                        continue
                    if len(buf) - (sp + 1) < n:
                        return pos
                    self._emit(out, bytes(buf[sp + 1:sp + 1 + n]).rstrip(b"\r\n"))
                    pos = sp + 1 + n
                    continue
            nl = buf.find(b"\n", pos)
            if nl < 0 and len(buf) - pos <= limit:
                return pos  # the line is still arriving
            if nl < 0 or nl - pos > limit:
                self._skip, self._skip_len = -1, None
                continue
            self._emit(out, bytes(buf[pos:nl]).rstrip(b"\r"))
            pos = nl + 1

    def _drop(self, pos: int) -> int:
        """Drop what is buffered of the oversized frame; report it once it has been dropped whole."""
        buf = self._buf
        if self._skip < 0:
            nl = buf.find(b"\n", pos)
            end = len(buf) if nl < 0 else nl
            done = nl >= 0
        else:
            end = pos + min(self._skip, len(buf) - pos)
            self._skip -= end - pos
            done = self._skip == 0
        if len(self._skip_prefix) < PREFIX_BYTES:
            self._skip_prefix += bytes(buf[pos:min(end, pos + PREFIX_BYTES - len(self._skip_prefix))])
        if not done:
            return end
        self._skip = 0
        self._report()
        return end + 1 if self._skip_len is None else end

    def _report(self) -> None:
        OVERSIZED.inc()
        length, prefix, self._skip_prefix = self._skip_len, self._skip_prefix, b""
        if self.on_oversize is not None:
            self.on_oversize(length, prefix)

    @staticmethod
    def _emit(out: list[bytes], msg: bytes) -> None:
        if msg:
            out.append(msg)


class SyslogTCPSource:
    """Listens on `host:port` once `start()`ed; `port=0` picks a free port (see `address`)."""

    def __init__(self, host: str, port: int, on_message: MessageHandler | None = None, *,
                 handler_per_connection: HandlerFactory | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, on_oversize: OversizeHandler | None = None,
                 max_connections: int = 1024, drain_s: float = 0.5) -> None:
        """One of `on_message` (every message) or `handler_per_connection` (state of one stream)."""
        if (on_message is None) == (handler_per_connection is None):
            raise ValueError("give on_message or handler_per_connection, not both or neither")
        self.host = host
        self.port = port
        self.on_message = on_message
        self.handler_per_connection = handler_per_connection
        self.max_message_bytes = max_message_bytes
        self.on_oversize = on_oversize
        self.max_connections = max_connections
        self.drain_s = drain_s
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=READ_BYTES)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop accepting; give open connections `drain_s` to deliver what they sent, then cut them."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        if not self._clients:
            return
        _, pending = await asyncio.wait(set(self._clients), timeout=self.drain_s)
        for task in pending:
            self._clients[task].close()  # the reader sees EOF: the handler ends on its own
        _, stuck = await asyncio.wait(pending, timeout=self.drain_s) if pending else (set(), set())
        for task in stuck:  # a handler that holds on (back-pressure without end)
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs each connection's callback in its own task
        peer = writer.get_extra_info("peername")
        if len(self._clients) >= self.max_connections:
            log.warning("syslog tcp: %d connections open; refusing %s", len(self._clients), peer)
            writer.close()
            return
        CONNECTIONS.inc()
        self._clients[task] = writer
        decoder = FrameDecoder(self.max_message_bytes, self.on_oversize)
        handler = self.on_message if self.handler_per_connection is None else self.handler_per_connection()
        assert handler is not None  # one of the two, checked in __init__
        try:
            while data := await reader.read(READ_BYTES):
                for msg in decoder.feed(data):
                    await _deliver(handler, msg)
            for msg in decoder.finish():
                await _deliver(handler, msg)
        except ConnectionError as e:
            log.info("syslog tcp: %s dropped: %r", peer, e)
        except asyncio.CancelledError:
            # cut by close(); ending normally keeps Python 3.11's stream callback from logging it
            log.warning("syslog tcp: %s cut while its handler was still busy", peer)
        finally:
            del self._clients[task]
            writer.close()



async def _deliver(handler: MessageHandler, msg: bytes) -> None:
    MESSAGES.inc()
    try:
        result = handler(msg)
        if inspect.isawaitable(result):
            await result  # back-pressure: this connection is not read meanwhile
    except Exception:  # one bad message must not stop the connection
        log.exception("syslog tcp message handler failed")


class _Batcher:
    """Parses messages and batches events for the sink, holding on to them while the sink refuses.

    Not `IngestPipeline`: under back-pressure this one keeps the events it could not send and makes
    the connection wait (`await take(...)`), so TCP pushes back on the sender instead of losing lines.
    """

    def __init__(self, parser: LineParser, sink: EventSink, batch_max: int) -> None:
        self.parser = parser
        self.sink = sink
        self.batch_max = batch_max
        self.buffer: list[AccessEvent] = []
        self._lines = metrics.LINES_RECEIVED.labels(source=parser.source)

    def connection_handler(self) -> MessageHandler:
        """`take` with the numbering of one connection's identical messages (see the module doc)."""
        distinct = Occurrences()
        return lambda msg: self.take(msg, distinct)

    async def take(self, msg: bytes, distinct: Occurrences) -> None:
        self._lines.inc()
        result = self.parser(msg, now_ms())
        if isinstance(result, Rejection):
            await _until_accepted(lambda: self.sink.send_rejection(result))
            return
        self.buffer.append(distinct(result))
        if len(self.buffer) >= self.batch_max:
            await _until_accepted(self.flush)

    def flush(self) -> None:
        if self.buffer:
            self.sink.send_events(self.buffer)  # all or nothing: on error the buffer stays
            self.buffer = []

    async def flush_periodically(self, stop: asyncio.Event, interval_s: float = 0.1) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            try:
                self.flush()
            except Exception as e:  # refused: kept, tried again next round
                log.warning("syslog tcp: sink refused %d events: %s", len(self.buffer), e)


async def _until_accepted(call: Callable[[], None]) -> None:
    """Hold this connection until the sink takes `call`'s events (its back-pressure)."""
    async for attempt in retry.until_accepted(log, "syslog tcp: sink refused"):
        with attempt:
            call()


async def serve_syslog_tcp_ingest(ingest: IngestSettings, sink: EventSink, stop: asyncio.Event, *,
                                  fmt: str = "haproxy", max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Receive syslog on `tcp://syslog_host:syslog_tcp_port` into `sink` until `stop`, then drain.

    `fmt` names the parser (`ingest.parsers.auto.parser_for`). Oversized frames become `too_long`
    rejections on the DLQ, with their first bytes.
    """
    batcher = _Batcher(parser_for(fmt, ingest), sink, ingest.batch_max)

    def oversize(length: int | None, prefix: bytes) -> None:
        size = "a line" if length is None else f"a frame of {length} bytes"
        try:
            sink.send_rejection(reject(SOURCE, "too_long", f"{size} over the {max_message_bytes}-byte limit",
                                       prefix, now_ms()))
        except Exception as e:  # only a report of dropped input: not worth holding the connection for
            log.warning("syslog tcp: could not dead-letter an oversized frame: %s", e)

    source = SyslogTCPSource(ingest.syslog_host, ingest.syslog_tcp_port,
                             handler_per_connection=batcher.connection_handler,
                             max_message_bytes=max_message_bytes, on_oversize=oversize)
    await source.start()
    log.info("ingest: syslog on tcp://%s:%d", *source.address)
    try:
        await batcher.flush_periodically(stop)
    finally:
        await source.close()
        try:
            batcher.flush()
        finally:
            sink.flush(timeout=10.0)


def run_syslog_tcp_ingest(ingest: IngestSettings, sink: EventSink, *, fmt: str = "haproxy",
                          metrics_port: int | None = None) -> None:
    """The TCP syslog process: until SIGTERM/SIGINT, then drains and flushes; the caller closes `sink`."""
    run_until_signalled(lambda stop: serve_syslog_tcp_ingest(ingest, sink, stop, fmt=fmt), metrics_port=metrics_port)
    log.info("ingest: syslog tcp stopped")
