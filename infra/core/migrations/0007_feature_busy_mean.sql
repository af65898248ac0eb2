-- The mean of foresight_backend_busy_workers_ratio's samples in a feature window, beside their peak
-- (busy_max): the utilisation the per-instance capacity estimate reads (the peak reads high). For `*`
-- the highest instance mean. Rows written before this migration read 0 (no sample). Runs on 18.16 and chDB.
-- Re-run safe: the ALTER runs only while the column is missing (system.columns).
-- when: SELECT count() = 0 FROM system.columns WHERE database = '{db}' AND table = 'features' AND name = 'busy_mean'
ALTER TABLE {db}.features ADD COLUMN busy_mean Float64 DEFAULT 0 AFTER busy_max
