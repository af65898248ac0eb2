"""2 s per-instance windows inside 10 s service-wide ones, end to end on a private stack (free ports,
its own folder, stopped afterwards; the shared stack is not touched): events through ingest HTTP and
the real Faust worker land in ClickHouse exactly as the offline reference counts them, and the pool
backends, found in the registry by the scrape source, bring their gauges into their instances' windows."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.chaos import _toml, private_config
from infra.core.db import client
from infra.core.service_registry import Registry
from infra.core.settings import Settings, load_settings
from infra.stack.launcher import down, up
from streams.reference import ROW_COLUMNS, WindowRow, compare_windows, reference_windows
from streams.windows import SKETCH_RELATIVE_ACCURACY

SERVICE = "shortwin"


@pytest.fixture(scope="module")
def short_stack() -> Iterator[Settings]:
    folder = Path(tempfile.mkdtemp(prefix="fs-short-", dir="/tmp"))
    config = private_config(folder)
    data = tomllib.loads(config.read_text())
    data.setdefault("streams", {})["instance_window_s"] = 2
    config.write_text(f'state_dir = "{data.pop("state_dir")}"\n' + _toml(data) + "\n")
    s = load_settings(config, state_dir=folder)
    try:
        up(s, lambda _: None, config, only={"stream-worker", "ingest-http", "ingest-scrape", "pool"})
        yield s
    finally:
        down(s, lambda _: None)
        shutil.rmtree(folder, ignore_errors=True)


def _load(url: str, stop: threading.Event) -> None:
    """Requests straight to a pool backend, one after the other, so its busy gauge moves."""
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            try:
                http.get(url)
            except httpx.HTTPError:
                stop.wait(0.1)


def test_two_second_instance_windows_and_the_backends_gauges(short_stack: Settings) -> None:
    s = short_stack
    registry = Registry(s.registry_endpoint, s.registry.prefix)
    try:
        deadline = time.monotonic() + 60  # the pool answers before its instances warmed up and registered
        while not (listed := [e for e in registry.list("web") if e.record is not None and e.record.state == "ready"]):
            assert time.monotonic() < deadline, "the pool registered no web instance"
            time.sleep(0.5)
    finally:
        registry.close()
    web = [e.record for e in listed if e.record is not None]
    stop = threading.Event()
    loaders = [threading.Thread(target=_load, args=(f"http://{r.address}:{r.port}/work", stop), daemon=True)
               for r in web for _ in range(3)]
    for loader in loaders:
        loader.start()
    url = f"http://{s.ingest.http_host}:{s.ingest.http_port}/v1/logs"
    token = s.ingest_token
    headers = {"Content-Type": "application/x-ndjson", **({"Authorization": f"Bearer {token}"} if token else {})}
    sent: list[dict[str, object]] = []
    n = 0
    try:
        with httpx.Client(timeout=10) as http:
            end = time.time() + 22  # two service-wide windows at least, eleven instance windows
            while time.time() < end:
                ts = int(time.time() * 1000)
                events = [{"time": ts + i, "method": "GET", "path": f"/e{n + i}", "status": 503 if (n + i) % 7 == 0
                           else 200, "latency_ms": 5.0 + (n + i) % 40, "bytes": 100 + (n + i) % 9,
                           "service": SERVICE, "instance": "ab"[(n + i) % 2]} for i in range(10)]
                n += len(events)
                resp = http.post(url, params={"format": "json", "wait": "true"}, headers=headers,
                                 content="".join(json.dumps(e) + "\n" for e in events))
                assert resp.status_code == 200 and resp.json().get("accepted") == len(events), resp.text
                sent += [{"ts": e["time"], "service": SERVICE, "instance": e["instance"], "status": e["status"],
                          "latency_ms": e["latency_ms"], "bytes_sent": e["bytes"]} for e in events]
                time.sleep(0.25)
    finally:
        stop.set()
        for loader in loaders:
            loader.join(15)
    reference = reference_windows(sent, s.streams.window_s, instance_window_s=2)
    columns = ", ".join(f"toUInt32({c})" if c in ("window_start", "window_end") else c for c in ROW_COLUMNS)
    cl = client(s.clickhouse)
    try:
        deadline = time.time() + 90
        while True:
            rows = [WindowRow(**dict(zip(ROW_COLUMNS, r, strict=True))) for r in cl.execute(
                f"SELECT {columns} FROM {s.clickhouse.database}.features FINAL WHERE service = %(s)s", {"s": SERVICE})]
            problems = compare_windows(reference, rows, s.streams.window_s, SKETCH_RELATIVE_ACCURACY,
                                       instance_window_s=2)
            if not problems or time.time() > deadline:
                break
            time.sleep(2)
        gauges = cl.execute(
            f"SELECT instance, max(busy_max), min(toUInt32(window_end) - toUInt32(window_start)), max(busy_mean), "
            f"min(busy_max - busy_mean) "
            f"FROM {s.clickhouse.database}.features FINAL WHERE service = 'web' AND instance != '*' GROUP BY instance")
    finally:
        cl.disconnect()
    assert problems == []
    assert {g[0] for g in gauges} >= {e.instance for e in listed}  # windows under the registry's names
    busy = {inst: b for inst, b, size, _, _ in gauges if size == 2}
    assert any(b > 0 for b in busy.values()), gauges  # the backends' own gauge, scraped after discovery
    # ...with the mean of its samples beside the peak (the capacity estimate's utilisation), never above it
    assert any(mean > 0 for *_, mean, _ in gauges) and all(gap >= -1e-9 for *_, gap in gauges), gauges
