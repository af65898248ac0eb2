-- Re-delivery must not add rows: the record sink (metric_samples) and the decision log's spool
-- replay (decisions, predictions) write at least once. Both become ReplacingMergeTree with a key that identifies
-- one sample / one decision, so a row written twice collapses on merge and counts once under FINAL.
-- Neither engine can be ALTERed (18.16), so each table is rebuilt: new table, copy, swap, drop. Run
-- again after a crash part-way, it rebuilds from whatever the table holds then (the leftover
-- `_0002` copy was already copied before its swap).
-- Runs on ClickHouse 18.16 and chDB (arrays may be part of a sorting key on both).

-- One sample is (service, name, instance, ts_ms, labels); `ts` leads for the day partition's range scans.
CREATE TABLE IF NOT EXISTS {db}.metric_samples_0004
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
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (service, name, instance, ts, ts_ms, label_keys, label_values);

INSERT INTO {db}.metric_samples_0004 (ts_ms, service, instance, name, value, label_keys, label_values)
SELECT ts_ms, service, instance, name, value, label_keys, label_values FROM {db}.metric_samples;

DROP TABLE IF EXISTS {db}.metric_samples_0002;

RENAME TABLE {db}.metric_samples TO {db}.metric_samples_0002, {db}.metric_samples_0004 TO {db}.metric_samples;

DROP TABLE {db}.metric_samples_0002;

-- One decision is (service, ts_ms, actuator, target, action): a replayed decision replaces itself.
CREATE TABLE IF NOT EXISTS {db}.decisions_0004
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
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (service, ts, ts_ms, actuator, target, action);

INSERT INTO {db}.decisions_0004 (ts_ms, service, actuator, target, action, before, after, reason, prediction_refs,
                                 dry_run, outcome)
SELECT ts_ms, service, actuator, target, action, before, after, reason, prediction_refs, dry_run, outcome
FROM {db}.decisions;

DROP TABLE IF EXISTS {db}.decisions_0002;

RENAME TABLE {db}.decisions TO {db}.decisions_0002, {db}.decisions_0004 TO {db}.decisions;

DROP TABLE {db}.decisions_0002
;

-- One prediction is (kind, service, instance, model, model_version, ts_ms, horizon, quantile): a
-- decision's `prediction_refs` name the ts in ms, so two predictions in the same second must not
-- replace each other (0002 keyed on the second).
CREATE TABLE IF NOT EXISTS {db}.predictions_0004
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
ORDER BY (kind, service, instance, ts, ts_ms, model, model_version, horizon_s, quantile);

INSERT INTO {db}.predictions_0004 (ts_ms, kind, service, instance, model, model_version, horizon_s, quantile, value)
SELECT ts_ms, kind, service, instance, model, model_version, horizon_s, quantile, value FROM {db}.predictions;

DROP TABLE IF EXISTS {db}.predictions_0002;

RENAME TABLE {db}.predictions TO {db}.predictions_0002, {db}.predictions_0004 TO {db}.predictions;

DROP TABLE {db}.predictions_0002
