-- Saturation signals of a feature window (HAProxy exporter via fs.metrics): the peak of current
-- sessions and of the queue (for `*`: the sum of the instances' peaks) and the increase of
-- connection errors. Rows written before this migration read 0. Runs on 18.16 and chDB.
ALTER TABLE {db}.features ADD COLUMN sessions_max Float64 DEFAULT 0 AFTER bytes_sent;
ALTER TABLE {db}.features ADD COLUMN queue_max Float64 DEFAULT 0 AFTER sessions_max;
ALTER TABLE {db}.features ADD COLUMN conn_errors Float64 DEFAULT 0 AFTER queue_max
