-- The rest of the record (DESIGN.md "Contracts"). Must run on ClickHouse 18.16 and on chDB:
-- DateTime only (no DateTime64), no TTL (retention drops day partitions: infra.db.retain),
-- no Map (labels are two parallel arrays), no LowCardinality (experimental in 18.16).
-- Event time is kept as the contract's epoch milliseconds (ts_ms); `ts` is derived from it so
-- the day partition and time filters need no arithmetic and the writer cannot get it wrong.

-- Raw fs.access events. Kafka delivers at least once: a re-delivered event has the same
-- (service, instance, ts, id) and collapses on merge / FINAL.
CREATE TABLE IF NOT EXISTS {db}.access_events
(
    ts_ms UInt64,
    ts DateTime DEFAULT toDateTime(intDiv(ts_ms, 1000)),
    id String,
    service String,
    instance String,
    method String,
    route String,
    status UInt16,
    latency_ms Float64,
    bytes_sent UInt64,
    source String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (service, instance, ts, id);

-- fs.metrics samples. Labels as parallel key/value arrays (18.16 has no Map);
-- read one with `label_values[indexOf(label_keys, 'k')]`.
CREATE TABLE IF NOT EXISTS {db}.metric_samples
(
    ts_ms UInt64,
    ts DateTime DEFAULT toDateTime(intDiv(ts_ms, 1000)),
    service String,
    instance String,
    name String,
    value Float64,
    label_keys Array(String),
    label_values Array(String)
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (service, name, instance, ts);

-- Model outputs: one row per (prediction, horizon, quantile); a point forecast or a score uses
-- horizon_s = 0 / quantile = 0.5 as the writer sees fit. target_ts = ts + horizon_s, stored so
-- backtests join on it directly. A prediction re-written (same key) replaces the earlier one.
CREATE TABLE IF NOT EXISTS {db}.predictions
(
    ts_ms UInt64,
    ts DateTime DEFAULT toDateTime(intDiv(ts_ms, 1000)),
    kind String,
    service String,
    instance String,
    model String,
    model_version String,
    horizon_s UInt32,
    target_ts DateTime DEFAULT ts + horizon_s,
    quantile Float32,
    value Float64
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (kind, service, instance, ts, model_version, horizon_s, quantile);

-- fs.decisions: what an adapter did or (dry_run = 1) would have done, and why.
-- before/after are Nullable: a drain or a first weight has no numeric before/after.
CREATE TABLE IF NOT EXISTS {db}.decisions
(
    ts_ms UInt64,
    ts DateTime DEFAULT toDateTime(intDiv(ts_ms, 1000)),
    service String,
    actuator String,
    target String,
    action String,
    before Nullable(Float64),
    after Nullable(Float64),
    reason String,
    prediction_refs Array(String),
    dry_run UInt8,
    outcome String
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (service, ts, actuator, target);

-- Model registry mirror. Not day-partitioned on purpose: retention must never drop the record of
-- a model that may still be serving, and ReplacingMergeTree only collapses rows within one
-- partition, so re-registering a version (later created_at) must land in the same one.
CREATE TABLE IF NOT EXISTS {db}.model_versions
(
    kind String,
    version String,
    created_at DateTime,
    data_fingerprint String,
    metrics String,
    path String
)
ENGINE = ReplacingMergeTree(created_at)
PARTITION BY tuple()
ORDER BY (kind, version);
