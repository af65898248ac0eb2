"""One burst through every real hop: HAProxy -> syslog -> ingest -> Kafka -> Faust -> ClickHouse ->
Ray Serve -> weight policy -> HAProxy runtime API. Each hop is checked at its own server."""

from __future__ import annotations

import json
import socket
from collections import Counter

import httpx

from infra.core.db import client as clickhouse_client
from infra.core.settings import Settings
from infra.thin_path import end_offsets, send_burst, watch_access, watch_clickhouse, watch_features
from infra.workers import build_weight_controller
from ingest.schemas import AccessEvent
from serving.schemas import WeightsResponse
from streams.schemas import FeatureWindow


def runtime_api(settings: Settings, command: str) -> str:
    """Talks to HAProxy directly, not through the adapter under test."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(settings.haproxy_socket))
        sock.sendall(command.encode() + b"\n")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode()


def haproxy_weights(settings: Settings) -> dict[str, int]:
    lines = runtime_api(settings, f"show servers state {settings.haproxy.backend}").splitlines()
    header = next(ln for ln in lines if ln.startswith("# be_id"))[2:].split()
    rows = [dict(zip(header, ln.split(), strict=False)) for ln in lines[2:] if ln.strip() and not ln.startswith("#")]
    return {r["srv_name"]: int(r["srv_uweight"]) for r in rows}


def test_every_hop_of_the_thin_path(stack: Settings) -> None:
    s = stack
    access_from = end_offsets(s.kafka, s.kafka.topic_access)
    features_from = end_offsets(s.kafka, s.kafka.topic_features)
    burst = send_burst(s, 120, concurrency=4)
    assert burst.statuses == {200: 120}

    # Hop 1: the Kafka records hold exactly this burst's events, valid and keyed service/instance.
    access = watch_access(s, access_from, burst)
    assert access.ok, access.detail
    assert set(access.detail["keys"]) == {"demo/s1", "demo/s2"}
    event = AccessEvent.model_validate(access.detail["sample"])
    assert event.service == "demo" and event.source == "haproxy" and event.status == 200
    assert burst.start_ms - 2000 <= event.ts <= burst.end_ms + 2000  # HAProxy's local time, converted to UTC

    # Hop 2: windows on fs.features; per instance they hold what HAProxy sent to that instance.
    features = watch_features(s, features_from, burst)
    assert features.ok, features.detail
    windows = [FeatureWindow.model_validate(w) for w in features.detail["windows"]]
    per_instance = Counter[str]()
    for w in windows:
        per_instance[w.instance] += w.requests
        assert w.status_2xx == w.requests and w.window_end - w.window_start == s.streams.window_s * 1000
    assert sum(per_instance.values()) == 120 and set(per_instance) == {"s1", "s2"}
    slow_p99 = max(w.latency_p99_ms for w in windows if w.instance == "s2")
    assert slow_p99 >= s.demo.latencies_ms[1] * 0.8  # the slow backend's latency reached the features

    # Hop 3: the same counts are rows of ClickHouse `features`.
    ch = watch_clickhouse(s, burst)
    assert ch.ok, ch.detail
    rows = clickhouse_client(s.clickhouse).execute(
        f"SELECT instance, sum(requests) FROM {s.clickhouse.database}.features FINAL "
        "WHERE service = 'demo' AND instance != '*' AND window_start IN %(starts)s GROUP BY instance",
        {"starts": tuple({r["window_start"] for r in ch.detail["rows"]})},
    )
    # >= : a window of this burst may also hold a neighbouring test's requests, never fewer.
    assert {inst: n >= per_instance[inst] for inst, n in rows} == {"s1": True, "s2": True}

    # Hop 4: Ray Serve answers /v1/weights; the faster instance weighs more.
    feats = [{"instance": w.instance, "latency_p99_ms": w.latency_p99_ms} for w in windows]
    auth = {"Authorization": f"Bearer {s.serving_token}"} if s.serving_token else {}
    resp = httpx.post(f"{s.serving_url}/v1/weights", json={"service": "demo", "instances": feats}, headers=auth,
                      timeout=10)
    assert resp.status_code == 200, resp.text
    answer = WeightsResponse.model_validate(resp.json())
    assert answer.model_version == "baseline"
    weights = {w.instance: w.weight for w in answer.weights}
    assert weights["s1"] > weights["s2"]

    # Hop 5: the adapter applies the decision; HAProxy itself reports the new weights.
    for server in ("s1", "s2"):
        assert runtime_api(s, f"set server demo/{server} weight 100").strip() == ""
    report = build_weight_controller(s, "thin-path-test").step("demo")
    assert report.decisions, report.note
    applied = {d.target.split("/")[1]: int(d.after) for d in report.decisions
               if d.outcome == "applied" and d.after is not None}
    in_haproxy = haproxy_weights(s)
    assert applied and all(in_haproxy[inst] == w for inst, w in applied.items())
    assert in_haproxy["s1"] > in_haproxy["s2"]


def test_bad_log_line_goes_to_dead_letter_topic_with_reason(stack: Settings) -> None:
    s = stack
    dlq_from = end_offsets(s.kafka, s.kafka.topic_dlq)
    marker = "garbage-" + str(id(s))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"<134>Nov 28 21:30:07 haproxy[1]: {marker} this is no httplog".encode(),
                    (s.ingest.syslog_host, s.ingest.syslog_port))
    from infra.thin_path import read_records

    records = read_records(s.kafka, s.kafka.topic_dlq, dlq_from,
                           lambda recs: any(marker.encode() in r.value for r in recs), timeout_s=20)
    rejected = [json.loads(r.value) for r in records if marker.encode() in r.value]
    assert rejected, "the malformed line never reached fs.dlq"
    assert rejected[0]["source"] == "haproxy" and rejected[0]["reason"]
    assert marker in rejected[0]["raw"]
