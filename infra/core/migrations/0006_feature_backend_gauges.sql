-- Pool backends' own gauges in a feature window (scraped from each backend's /metrics via fs.metrics):
-- the peak of foresight_backend_resource_ratio (the resource a leak exhausts, 0 healthy .. 1 about to
-- crash) and of foresight_backend_busy_workers_ratio. For `*` both are the highest instance peak (a
-- ratio does not add up over instances). Rows written before this migration read 0. Runs on 18.16 and chDB.
-- Re-run safe: each ALTER runs only while its column is missing (system.columns), so a run cut short completes.
-- when: SELECT count() = 0 FROM system.columns WHERE database = '{db}' AND table = 'features' AND name = 'resource_max'
ALTER TABLE {db}.features ADD COLUMN resource_max Float64 DEFAULT 0 AFTER conn_errors;
-- when: SELECT count() = 0 FROM system.columns WHERE database = '{db}' AND table = 'features' AND name = 'busy_max'
ALTER TABLE {db}.features ADD COLUMN busy_max Float64 DEFAULT 0 AFTER resource_max
