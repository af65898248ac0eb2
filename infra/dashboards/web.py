"""`foresight dashboard`: the live page per service, on loopback, behind the token when one is set.

Server-sent events push a fresh snapshot whenever the record changes; the browser draws it with
the page's own script (no outside network: the JavaScript is in this repository). A browser's
EventSource cannot send a header, so `?token=` on the first page sets an HttpOnly cookie that
the later requests carry; an API client may send `Authorization: Bearer` instead.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from infra.dashboards.data import DashboardData, ServiceSnapshot

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "foresight_dashboard_token"

SNAPSHOTS = Counter("foresight_dashboard_snapshots_total", "Snapshots read from ClickHouse.", ["outcome"])
STREAMS = Gauge("foresight_dashboard_streams", "Browsers following a service (open event streams).")


def build_dashboard_app(data: DashboardData, token: str | None = None, refresh_s: float = 2.0) -> FastAPI:
    app = FastAPI(title="Foresight dashboard", description="The live view of one service: traffic and forecast, "
                  "replicas, weights and risk, decisions and component health.")
    lock = threading.Lock()  # one ClickHouse connection; clickhouse-driver's client is not thread-safe

    def read(service: str) -> ServiceSnapshot:
        with lock:
            try:
                snap = data.snapshot(service)
            except Exception:
                SNAPSHOTS.labels("error").inc()
                raise
        SNAPSHOTS.labels("ok").inc()
        return snap

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:]
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "token required: open the page with ?token=<dashboard.token>, "
                                     "or send Authorization: Bearer <token>")

    auth = [Depends(authorised)]

    def _with_cookie(response: Response, request: Request) -> Response:
        if token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", dependencies=auth, response_class=HTMLResponse)
    def index(request: Request) -> Response:
        with lock:
            services = data.services()
        if len(services) == 1:
            return _with_cookie(RedirectResponse(f"/services/{services[0]}"), request)
        links = "".join(f'<li><a href="/services/{s}">{s}</a></li>' for s in services) or \
            "<li>no service has feature windows or decisions in the last 24 h yet</li>"
        page = f"<!doctype html><title>Foresight</title><h1>Foresight</h1><ul id='services'>{links}</ul>"
        return _with_cookie(HTMLResponse(page), request)

    @app.get("/services/{service}", dependencies=auth, response_class=HTMLResponse)
    def page(service: str, request: Request) -> Response:
        return _with_cookie(HTMLResponse((STATIC / "service.html").read_text()), request)

    @app.get("/api/services/{service}", dependencies=auth, response_model=ServiceSnapshot)
    def snapshot(service: str) -> ServiceSnapshot:
        return read(service)

    @app.get("/api/services/{service}/events", dependencies=auth)
    async def events(service: str, request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            STREAMS.inc()
            last = ""
            try:
                while not await request.is_disconnected():
                    try:
                        snap = await asyncio.to_thread(read, service)
                    except Exception as exc:
                        yield f"event: error\ndata: {type(exc).__name__}: {exc}\n\n"
                    else:
                        body = snap.model_dump_json(exclude={"generated_at"})
                        if body != last:
                            last = body
                            yield f"data: {snap.model_dump_json()}\n\n"
                    await asyncio.sleep(refresh_s)
            finally:
                STREAMS.dec()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
