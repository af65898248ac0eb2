"""HTTP ingest: `POST /v1/logs` and `POST /v1/metrics` for senders that can neither write a file
we tail nor speak syslog (serverless functions, other clusters, batch back-fills).

Why these choices:
- The body is read as a stream and counted before and after gunzip, so neither a large body nor
  a small gzip bomb gets further than `http_max_body_bytes` into memory.
- Auth is checked before the body is read: a caller without the token costs nothing.
- Parsing and the sink calls run in a worker thread under one lock: parsing megabytes must not
  stall the event loop, and a sink that blocks (its spool full) holds requests back instead of
  dropping them, while the sink itself is only ever called by one thread at a time.
- 202 means handed to the sink (Kafka sends asynchronously, the spool covers outages). With
  `?wait=true` the sink is flushed first and 200 means acknowledged; on failure the answer is 503
  and the client retries (event ids are stable, so a retry cannot double-count).
- A body is a delivery unit: its identical lines are numbered apart (`Occurrences`, counted from
  the body's first line), so they stay distinct events and a retry of the same body repeats its
  ids. Identical lines sent in two bodies share an id (merged downstream): a sender that splits a
  retry differently from the first try numbers its repeats differently.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import threading
import zlib
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from infra.core.settings import IngestSettings
from ingest import metrics
from ingest.parsers.auto import parser_for
from ingest.parsers.base import LineParser, Occurrences, now_ms, reject
from ingest.schemas import AccessEvent, MetricSample
from ingest.sinks.base import EventSink, MetricSink
from ingest.sources.scrape import samples_from_exposition

log = logging.getLogger(__name__)

LogFormat = Literal["auto", "clf", "haproxy", "json"]
MetricFormat = Literal["auto", "ndjson", "prometheus"]
ParserFactory = Callable[[str], LineParser]  # format name -> parser; ValueError/KeyError: not available
JSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json", "application/jsonlines"})
GZIP = frozenset({"gzip", "x-gzip"})
FLUSH_TIMEOUT_S = 10.0
METRICS_SOURCE = "http_metrics"
_BLANK = b" \t\r"


class IngestResult(BaseModel):
    accepted: int = Field(description="Lines (samples) that became events and were handed to Kafka.")
    rejected: int = Field(description="Lines sent to the dead-letter topic instead.")
    reasons: dict[str, int] = Field(default_factory=dict, description="Rejected lines by reason.")
    skipped: int = Field(0, description="Blank lines; samples whose value is NaN or infinite (JSON has neither).")


HAPROXY_LINE = ('<134>Nov 28 21:59:01 haproxy[23718]: 127.0.0.1:47118 [28/Nov/2026:21:59:01.176] fe be/s1 '
                '0/0/0/6/6 200 500 - - ---- 1/1/0/0/0 0/0 "GET /x1?q=1 HTTP/1.1"')
LOGS_BODY: dict[str, Any] = {
    "required": True,
    "description": "One log line per line (`text/plain`), or JSON lines (`application/x-ndjson`, read as "
                   "`format=json` when `format=auto`). `Content-Encoding: gzip` is accepted.",
    "content": {
        "text/plain": {"schema": {"type": "string"},
                       "examples": {"haproxy": {"summary": "HAProxy httplog lines", "value": HAPROXY_LINE + "\n"}}},
        "application/x-ndjson": {"schema": {"type": "string"}, "examples": {"json": {
            "summary": "JSON lines (fields per ingest.json_fields)",
            "value": '{"time": "2026-11-28T21:59:01Z", "method": "GET", "path": "/x1", "status": 200, '
                     '"latency_ms": 6, "bytes": 500, "service": "demo", "instance": "s1"}\n'}}},
    },
}
METRICS_BODY: dict[str, Any] = {
    "required": True,
    "description": "NDJSON of metric samples, or Prometheus text exposition (service/instance from the "
                   "query, HAProxy's `proxy`/`server` labels win). `Content-Encoding: gzip` is accepted.",
    "content": {
        "application/x-ndjson": {"schema": {"type": "string"}, "examples": {"samples": {
            "summary": "Metric samples",
            "value": '{"ts": 1795989541000, "service": "demo", "instance": "s1", "name": "cpu_ratio", '
                     '"value": 0.42, "labels": {"core": "0"}}\n'}}},
        "text/plain": {"schema": {"type": "string"}, "examples": {"prometheus": {
            "summary": "Prometheus text exposition",
            "value": '# TYPE http_requests_total counter\nhttp_requests_total{code="200"} 7\n'}}},
    },
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed body: bad gzip, not UTF-8 where JSON or exposition text is required, no "
                         "lines, unparsable exposition text, exposition samples without an instance (no "
                         "`server` label, no `instance` query parameter), or a format this server cannot parse.",
          "content": {"application/json": {"example": {"detail": "body is not valid gzip: incorrect header check"}}}},
    401: {"description": "A token is configured and the request has none, or a wrong one.",
          "content": {"application/json": {"example": {
              "detail": "missing bearer token: send 'Authorization: Bearer <token>'"}}}},
    413: {"description": "The body, or what it gunzips to, is over `ingest.http_max_body_bytes`.",
          "content": {"application/json": {"example": {
              "detail": "body over the 10485760-byte limit after gunzip (ingest.http_max_body_bytes); split it"}}}},
    415: {"description": "A Content-Encoding other than gzip."},
    503: {"description": "The sink failed, or (`wait=true`) Kafka did not acknowledge in time; retry."},
}
ACCEPTED_EXAMPLE = {"accepted": 2, "rejected": 1, "reasons": {"not_httplog": 1}, "skipped": 0}


def default_parser_factory(ingest: IngestSettings) -> ParserFactory:
    """`ingest.parsers.auto.parser_for`, one parser per format, built on first use and reused (they cache)."""
    parsers: dict[str, LineParser] = {}

    def factory(fmt: str) -> LineParser:
        if fmt not in parsers:
            parsers[fmt] = parser_for(fmt, ingest)
        return parsers[fmt]
    return factory


class _Gunzip:
    """Incremental gunzip that never produces more than `limit` bytes (gzip bombs stop there)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self._d.eof:  # concatenated gzip members are one stream (RFC 1952)
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = self._d.decompress(data, self.limit - self.size + 1)
            self.size += len(chunk)
            if self.size > self.limit:
                raise _too_large(self.limit, " after gunzip")
            out += chunk
            data = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
        return bytes(out)

    def finish(self) -> None:
        if not self._d.eof:
            raise HTTPException(400, "body is not valid gzip: the stream ends early (truncated upload?)")


def _too_large(limit: int, where: str = "") -> HTTPException:
    return HTTPException(413, f"body over the {limit}-byte limit{where} (ingest.http_max_body_bytes); split it")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped if so encoded, never holding more than `limit` bytes of it."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in GZIP and encoding != "identity":
        raise HTTPException(415, f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    gunzip = _Gunzip(limit) if encoding in GZIP else None
    body = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            body += gunzip.feed(chunk) if gunzip is not None else chunk
    except zlib.error as e:
        raise HTTPException(400, f"body is not valid gzip: {e}") from e
    if gunzip is not None:
        gunzip.finish()
    return bytes(body)


def _require_utf8(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPException(400, f"body is not UTF-8 ({what} must be): invalid byte at offset {e.start}") from e


def _lines(body: bytes) -> tuple[list[bytes], int]:
    lines = body.split(b"\n")
    kept = [line for line in lines if line.strip(_BLANK)]
    if not kept:
        raise HTTPException(400, "body has no lines: send one log line (or JSON object) per line")
    blank = len(lines) - len(kept) - (1 if body.endswith(b"\n") else 0)
    return kept, blank


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


_BEARER = HTTPBearer(auto_error=False, description="Required when ingest.http_token is set.")


class _BearerAuth:
    """Dependency checking the bearer token, when one is configured."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    async def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if self.token is None:
            return
        if credentials is None:
            detail = ("missing bearer token: send 'Authorization: Bearer <token>' with the token of "
                      "ingest.http_token (FORESIGHT_INGEST__HTTP_TOKEN)")
        elif not secrets.compare_digest(credentials.credentials.encode(), self.token.encode()):
            detail = "invalid bearer token: it does not match ingest.http_token"
        else:
            return
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


class _Ingest:
    """The sinks and the lock that keeps them single-threaded; runs in a worker thread."""

    def __init__(self, ingest: IngestSettings, sink: EventSink, metrics_sink: MetricSink) -> None:
        self.batch_max = ingest.batch_max
        self.sink = sink
        self.metrics_sink = metrics_sink
        self.lock = threading.Lock()

    def logs(self, parser: LineParser, lines: list[bytes], skipped: int, wait: bool) -> IngestResult:
        received = now_ms()
        events: list[AccessEvent] = []
        reasons: Tally[str] = Tally()
        with self.lock:
            for line in lines:
                result = parser(line, received)
                if isinstance(result, AccessEvent):
                    events.append(result)
                else:
                    reasons[result.reason] += 1
                    self.sink.send_rejection(result)
            metrics.LINES_RECEIVED.labels(source=parser.source).inc(len(lines))
            if events:
                self.sink.send_events(Occurrences().number(events))
            if wait:
                self.sink.flush(timeout=FLUSH_TIMEOUT_S)
        return IngestResult(accepted=len(events), rejected=sum(reasons.values()), reasons=dict(reasons),
                            skipped=skipped)

    def samples(self, lines: list[bytes], skipped: int, received: int, wait: bool) -> IngestResult:
        samples: list[MetricSample] = []
        reasons: Tally[str] = Tally()
        with self.lock:
            for line in lines:
                try:
                    sample = MetricSample.model_validate_json(line)
                except ValidationError as e:
                    first = e.errors()[0]
                    reason = "bad_json" if first["type"] == "json_invalid" else "bad_metric"
                    where = ".".join(str(x) for x in first["loc"])
                    reasons[reason] += 1
                    self.sink.send_rejection(reject(METRICS_SOURCE, reason, f"{where}: {first['msg']}"[:200],
                                                    line, received))
                    continue
                if not sample.instance.strip():  # whose state would it be? never guessed (e.g. from the client)
                    reasons["no_instance"] += 1
                    self.sink.send_rejection(reject(METRICS_SOURCE, "no_instance", "instance: empty", line,
                                                    received))
                    continue
                samples.append(sample)
            self._send_samples(samples, wait)
        return IngestResult(accepted=len(samples), rejected=sum(reasons.values()), reasons=dict(reasons),
                            skipped=skipped)

    def exposition(self, samples: list[MetricSample], skipped: int, wait: bool) -> IngestResult:
        with self.lock:
            self._send_samples(samples, wait)
        return IngestResult(accepted=len(samples), rejected=0, skipped=skipped)

    def _send_samples(self, samples: list[MetricSample], wait: bool) -> None:
        for start in range(0, len(samples), self.batch_max):
            self.metrics_sink.send_metrics(samples[start:start + self.batch_max])
        if wait:
            self.metrics_sink.flush(timeout=FLUSH_TIMEOUT_S)
            self.sink.flush(timeout=FLUSH_TIMEOUT_S)  # the dead letters too

    def flush(self) -> None:
        with self.lock:
            for flush in (self.sink.flush, self.metrics_sink.flush):
                try:
                    flush(timeout=FLUSH_TIMEOUT_S)
                except Exception:
                    log.exception("ingest http: flush at shutdown failed")


async def _in_worker(call: Callable[[], IngestResult], wait: bool) -> JSONResponse:
    try:
        result = await run_in_threadpool(call)
    except Exception as e:  # the sink (back-pressure, or Kafka not acknowledging): the client retries all
        log.warning("ingest http: sink refused: %s", e)
        raise HTTPException(503, f"not accepted, retry the whole body (ids make repeats harmless): "
                                 f"{type(e).__name__}: {e}"[:300],
                            headers={"Retry-After": "1"}) from e
    return JSONResponse(result.model_dump(), status_code=200 if wait else 202)


def build_http_app(ingest: IngestSettings, sink: EventSink, metrics_sink: MetricSink,
                   parser_factory: ParserFactory | None = None) -> FastAPI:
    """The ingest HTTP API. Rejected lines go to `sink.send_rejection`; the sinks are flushed at shutdown."""
    state = _Ingest(ingest, sink, metrics_sink)
    app = FastAPI(title="Foresight ingest", version="0.1.0", lifespan=_flushing_at_shutdown(state),
                  description="Access logs and metrics over HTTP, into Kafka (`fs.access`, `fs.metrics`, "
                              "rejected input to `fs.dlq`).")
    auth = [Depends(_BearerAuth(ingest.http_token.get_secret_value() if ingest.http_token else None))]
    _add_health_and_metrics(app)
    _add_logs_route(app, state, parser_factory or default_parser_factory(ingest), ingest.http_max_body_bytes, auth)
    _add_metrics_route(app, state, ingest, auth)
    return app


def _flushing_at_shutdown(state: _Ingest) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(state.flush)
    return lifespan


def _add_health_and_metrics(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _add_logs_route(app: FastAPI, state: _Ingest, factory: ParserFactory, limit: int, auth: list[Any]) -> None:
    @app.post("/v1/logs", dependencies=auth, response_model=IngestResult, status_code=202, responses={
        200: {"description": "`wait=true`: accepted and acknowledged by Kafka.", "model": IngestResult},
        202: {"content": {"application/json": {"example": ACCEPTED_EXAMPLE}}}, **ERRORS},
        openapi_extra={"requestBody": LOGS_BODY}, summary="Ingest access-log lines")
    async def post_logs(
        request: Request,
        format: Annotated[LogFormat, Query(description="Parser; `auto` lets the server pick (NDJSON content "
                                                      "type: `json`).")] = "auto",
        wait: Annotated[bool, Query(description="Answer only once Kafka acknowledged (200), else 202.")] = False,
    ) -> JSONResponse:
        fmt: str = format
        if fmt == "auto" and _media_type(request) in JSON_TYPES:
            fmt = "json"
        body = await read_body(request, limit)
        if fmt == "json":
            _require_utf8(body, "JSON lines")
        lines, blank = _lines(body)
        try:
            parser = factory(fmt)
        except (ValueError, KeyError) as e:
            raise HTTPException(400, f"format {fmt!r} is not available here: {e}") from e
        return await _in_worker(lambda: state.logs(parser, lines, blank, wait), wait)


def _add_metrics_route(app: FastAPI, state: _Ingest, ingest: IngestSettings, auth: list[Any]) -> None:
    @app.post("/v1/metrics", dependencies=auth, response_model=IngestResult, status_code=202, responses={
        200: {"description": "`wait=true`: accepted and acknowledged by Kafka.", "model": IngestResult},
        202: {"content": {"application/json": {"example": {"accepted": 2, "rejected": 0, "reasons": {},
                                                            "skipped": 1}}}}, **ERRORS},
        openapi_extra={"requestBody": METRICS_BODY}, summary="Ingest metric samples")
    async def post_metrics(
        request: Request,
        format: Annotated[MetricFormat, Query(description="`auto`: NDJSON if the content type or the first "
                                                         "line says so, else Prometheus text.")] = "auto",
        service: Annotated[str | None, Query(description="Prometheus text: service of samples without a "
                                                         "`proxy` label (default ingest.default_service).")] = None,
        instance: Annotated[str | None, Query(description="Prometheus text: instance of samples without a "
                                                          "`server` label; a sample with neither is refused "
                                                          "(400).")] = None,
        wait: Annotated[bool, Query(description="Answer only once Kafka acknowledged (200), else 202.")] = False,
    ) -> JSONResponse:
        body = await read_body(request, ingest.http_max_body_bytes)
        text = _require_utf8(body, "metrics")
        received = now_ms()
        sniffed_json = _media_type(request) in JSON_TYPES or text.lstrip().startswith("{")
        if format == "ndjson" or (format == "auto" and sniffed_json):
            lines, blank = _lines(body)
            return await _in_worker(lambda: state.samples(lines, blank, received, wait), wait)
        samples, skipped = _exposition_samples(text, received, service or ingest.default_service, instance)
        return await _in_worker(lambda: state.exposition(samples, skipped, wait), wait)


def _exposition_samples(text: str, received: int, service: str, instance: str | None
                        ) -> tuple[list[MetricSample], int]:
    """The samples of a Prometheus text body, each with an instance, or a 400 saying what is wrong.

    The instance is a `server` label or the `instance` query parameter, never the client's address:
    behind a proxy or NAT one address is many instances, and a sender that picks its own addresses
    would pick how much state the stream worker keeps."""
    if not text.strip():
        raise HTTPException(400, "body has no lines: send Prometheus text or NDJSON samples")
    try:
        samples, skipped = samples_from_exposition(text, received, service=service, instance=instance or "")
    except ValueError as e:
        raise HTTPException(400, f"not Prometheus text exposition: {e}"[:300]) from e
    anonymous = sorted({s.name for s in samples if not s.instance})
    if anonymous:
        raise HTTPException(400, f"{len(anonymous)} metrics have samples without an instance (e.g. "
                                 f"{anonymous[0]!r}): give them a `server` label or send ?instance=<name>"[:300])
    return samples, skipped


def run_http_ingest(ingest: IngestSettings, sink: EventSink, metrics_sink: MetricSink,
                    parser_factory: ParserFactory | None = None) -> None:
    """The `ingest http` process on `http_host:http_port` until SIGTERM/SIGINT; the sinks are flushed
    on the way out (the caller closes them). Prometheus metrics are on `/metrics` of the same port."""
    app = build_http_app(ingest, sink, metrics_sink, parser_factory)
    server = uvicorn.Server(uvicorn.Config(app, host=ingest.http_host, port=ingest.http_port,
                                           access_log=False, log_config=None))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the previous
    # handler; a no-op there lets this function return normally, like the other `run_*`.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("ingest: http stopped")
