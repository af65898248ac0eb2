-- Saturation signals of a feature window (HAProxy exporter via fs.metrics): the peak of current
-- sessions and of the queue (for `*`: the sum of the instances' peaks) and the increase of
-- connection errors. Rows written before this migration read 0. Runs on 18.16 and chDB.
-- Re-run safe: each ALTER runs only while its column is missing (system.columns), so a run cut short completes.
-- when: SELECT count() = 0 FROM system.columns WHERE database = '{db}' AND table = 'features' AND name = 'sessions_max'
ALTER TABLE {db}.features ADD COLUMN sessions_max Float64 DEFAULT 0 AFTER bytes_sent;
-- when: SELECT count() = 0 FROM system.columns WHERE database = '{db}' AND table = 'features' AND name = 'queue_max'
ALTER TABLE {db}.features ADD COLUMN queue_max Float64 DEFAULT 0 AFTER sessions_max;
-- when: SELECT count() = 0 FROM system.columns WHERE database = '{db}' AND table = 'features' AND name = 'conn_errors'
ALTER TABLE {db}.features ADD COLUMN conn_errors Float64 DEFAULT 0 AFTER queue_max
