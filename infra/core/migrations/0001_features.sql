-- Closed feature windows, one row per (service, instance, window). A window re-emitted after a
-- worker restart carries a later emitted_at and replaces the earlier row on merge or FINAL.
-- Runs on ClickHouse 18.16: DateTime (no DateTime64), no TTL, no LowCardinality.
CREATE TABLE IF NOT EXISTS {db}.features
(
    window_start DateTime,
    window_end DateTime,
    service String,
    instance String,
    requests UInt64,
    rate Float64,
    status_2xx UInt64,
    status_3xx UInt64,
    status_4xx UInt64,
    status_5xx UInt64,
    latency_p50_ms Float64,
    latency_p90_ms Float64,
    latency_p99_ms Float64,
    bytes_sent UInt64,
    late_events UInt64,
    emitted_at UInt64
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toDate(window_start)
ORDER BY (service, instance, window_start);
