-- Re-delivery must not add rows: the record sink (metric_samples) and the decision log's spool
-- replay (decisions, predictions) write at least once. Both become ReplacingMergeTree with a key that identifies
-- one sample / one decision, so a row written twice collapses on merge and counts once under FINAL.
-- Neither engine can be ALTERed (18.16), so each table T is rebuilt: new table T_0004, copy, swap, drop.
-- Runs on ClickHouse 18.16 and chDB (arrays may be part of a sorting key on both).
--
-- Re-run safe (a run that failed part-way is not recorded; the next `foresight db migrate` runs all of it
-- again). Every new key holds ts_ms and no old key does, so "T still has its old key" (`ts_ms` not in
-- T's sorting key, system.columns) guards the rebuild: a T already rebuilt is left alone, and while T is
-- old a leftover T_0004 (a copy cut short) is dropped and copied again. A two-table RENAME is not atomic on
-- 18.16: one stopped half-way leaves no T but a complete T_0004, which the guarded single RENAME finishes.
-- T_0002, the old T after the swap, is copied already and dropped whenever it is left.

-- One sample is (service, name, instance, ts_ms, labels); `ts` leads for the day partition's range scans.
-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'metric_samples' AND name = 'ts_ms' AND is_in_sorting_key = 0
DROP TABLE IF EXISTS {db}.metric_samples_0004;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'metric_samples' AND name = 'ts_ms' AND is_in_sorting_key = 0
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

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'metric_samples' AND name = 'ts_ms' AND is_in_sorting_key = 0
INSERT INTO {db}.metric_samples_0004 (ts_ms, service, instance, name, value, label_keys, label_values)
SELECT ts_ms, service, instance, name, value, label_keys, label_values FROM {db}.metric_samples;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'metric_samples' AND name = 'ts_ms' AND is_in_sorting_key = 0
DROP TABLE IF EXISTS {db}.metric_samples_0002;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'metric_samples' AND name = 'ts_ms' AND is_in_sorting_key = 0
RENAME TABLE {db}.metric_samples TO {db}.metric_samples_0002, {db}.metric_samples_0004 TO {db}.metric_samples;

-- when: SELECT countIf(name = 'metric_samples') = 0 AND countIf(name = 'metric_samples_0004') = 1 FROM system.tables WHERE database = '{db}'
RENAME TABLE {db}.metric_samples_0004 TO {db}.metric_samples;

DROP TABLE IF EXISTS {db}.metric_samples_0002;

-- One decision is (service, ts_ms, actuator, target, action): a replayed decision replaces itself.
-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'decisions' AND name = 'ts_ms' AND is_in_sorting_key = 0
DROP TABLE IF EXISTS {db}.decisions_0004;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'decisions' AND name = 'ts_ms' AND is_in_sorting_key = 0
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

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'decisions' AND name = 'ts_ms' AND is_in_sorting_key = 0
INSERT INTO {db}.decisions_0004 (ts_ms, service, actuator, target, action, before, after, reason, prediction_refs,
                                 dry_run, outcome)
SELECT ts_ms, service, actuator, target, action, before, after, reason, prediction_refs, dry_run, outcome
FROM {db}.decisions;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'decisions' AND name = 'ts_ms' AND is_in_sorting_key = 0
DROP TABLE IF EXISTS {db}.decisions_0002;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'decisions' AND name = 'ts_ms' AND is_in_sorting_key = 0
RENAME TABLE {db}.decisions TO {db}.decisions_0002, {db}.decisions_0004 TO {db}.decisions;

-- when: SELECT countIf(name = 'decisions') = 0 AND countIf(name = 'decisions_0004') = 1 FROM system.tables WHERE database = '{db}'
RENAME TABLE {db}.decisions_0004 TO {db}.decisions;

DROP TABLE IF EXISTS {db}.decisions_0002;

-- One prediction is (kind, service, instance, model, model_version, ts_ms, horizon, quantile): a
-- decision's `prediction_refs` name the ts in ms, so two predictions in the same second must not
-- replace each other (0002 keyed on the second).
-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'predictions' AND name = 'ts_ms' AND is_in_sorting_key = 0
DROP TABLE IF EXISTS {db}.predictions_0004;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'predictions' AND name = 'ts_ms' AND is_in_sorting_key = 0
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

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'predictions' AND name = 'ts_ms' AND is_in_sorting_key = 0
INSERT INTO {db}.predictions_0004 (ts_ms, kind, service, instance, model, model_version, horizon_s, quantile, value)
SELECT ts_ms, kind, service, instance, model, model_version, horizon_s, quantile, value FROM {db}.predictions;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'predictions' AND name = 'ts_ms' AND is_in_sorting_key = 0
DROP TABLE IF EXISTS {db}.predictions_0002;

-- when: SELECT count() > 0 FROM system.columns WHERE database = '{db}' AND table = 'predictions' AND name = 'ts_ms' AND is_in_sorting_key = 0
RENAME TABLE {db}.predictions TO {db}.predictions_0002, {db}.predictions_0004 TO {db}.predictions;

-- when: SELECT countIf(name = 'predictions') = 0 AND countIf(name = 'predictions_0004') = 1 FROM system.tables WHERE database = '{db}'
RENAME TABLE {db}.predictions_0004 TO {db}.predictions;

DROP TABLE IF EXISTS {db}.predictions_0002
