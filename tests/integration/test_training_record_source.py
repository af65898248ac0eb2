"""`foresight train --source clickhouse[:access_events] --from --to`: the dataset built from the raw
record (`access_events`, one row per request, re-deliveries collapsed) or from `features`, over a
time range, against the real ClickHouse 18.16 (a scratch database)."""

from __future__ import annotations

import numpy as np
import pytest

from infra.core.db import client
from infra.core.settings import ClickHouseSettings
from training.train_command import load_source

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC, a minute boundary
MINUTES = 180




def test_access_events_and_features_over_a_range(scratch_db: ClickHouseSettings) -> None:
    rng = np.random.default_rng(3)
    per_minute = rng.integers(1, 40, MINUTES)
    per_minute[100:103] = 0  # a quiet stretch: no rows at all, read as zero traffic
    events = [(T0 * 1000 + m * 60_000 + k * 7, f"e{m}-{k}", "trn", f"i{k % 2}", "GET", "/", 200, 1.0, 10, "test")
              for m in range(MINUTES) for k in range(int(per_minute[m]))]
    windows = [(T0 + m * 60, T0 + m * 60 + 60, "trn", "*", int(per_minute[m]), 1) for m in range(MINUTES)
               if per_minute[m]]
    cl = client(scratch_db)
    try:
        cols = "ts_ms, id, service, instance, method, route, status, latency_ms, bytes_sent, source"
        cl.execute(f"INSERT INTO {scratch_db.database}.access_events ({cols}) VALUES", events)
        cl.execute(f"INSERT INTO {scratch_db.database}.access_events ({cols}) VALUES", events[:500])  # re-delivered
        cl.execute(f"INSERT INTO {scratch_db.database}.features (window_start, window_end, service, instance, requests,"
                   " emitted_at) VALUES", [(np.datetime64(a, "s").astype(object), np.datetime64(b, "s").astype(object),
                                            *rest) for a, b, *rest in windows])
    finally:
        cl.disconnect()

    lo, hi = 30, 150  # minutes [30, 150)
    rng_s = (T0 + lo * 60, T0 + hi * 60)
    raw, described = load_source("clickhouse:access_events", "trn", None, scratch_db, rng_s)
    assert described["table"] == "access_events" and (described["from_s"], described["to_s"]) == rng_s
    assert raw.start_unix_s == T0 + lo * 60 and len(raw) == hi - lo
    np.testing.assert_allclose(raw.values, per_minute[lo:hi] / 60.0)  # the re-delivered 500 counted once

    feats, described = load_source("clickhouse", "trn", None, scratch_db, rng_s)
    assert described["table"] == "features"
    np.testing.assert_allclose(feats.values, raw.values)  # both sources agree on the same traffic

    everything, _ = load_source("clickhouse:access_events", "trn", None, scratch_db)
    assert len(everything) == MINUTES

    with pytest.raises(ValueError, match="--source must be"):
        load_source("clickhouse:nope", "trn", None, scratch_db)
