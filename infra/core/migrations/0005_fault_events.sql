-- Ground truth of injected faults (infra/pool/faults.py): the labels the risk and latency models
-- learn from and are judged against. One row per fault per instance; `failure_ms` is when the
-- instance counts as failed (errors above 1 %, or no answer), NULL for a fault that only degrades.
-- ClickHouse 18.16 and chDB: DateTime only, ReplacingMergeTree so a re-recorded fault counts once.
CREATE TABLE IF NOT EXISTS {db}.fault_events
(
    start_ms UInt64,
    ts DateTime DEFAULT toDateTime(intDiv(start_ms, 1000)),
    scenario String,
    seed Int64,
    service String,
    instance String,
    kind String,
    full_ms UInt64,
    end_ms Nullable(UInt64),
    failure_ms Nullable(UInt64),
    params String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (service, instance, start_ms, kind)
