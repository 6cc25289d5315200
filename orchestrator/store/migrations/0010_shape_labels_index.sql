-- A claim visits the shapes whose labels the free runners have (`labels <@ runner labels`): with a
-- GIN index that is a lookup of those shapes alone, where it was a scan of every shape of the
-- pool (100,000 shapes of jobs no runner can take made one claim ~40 ms; with it, ~1.5 ms once
-- the table is analyzed). No fast update: shapes are inserted seldom, and a pending list would be
-- scanned whole by every claim until the next vacuum.
CREATE INDEX job_shapes_labels_idx ON job_shapes USING gin (labels) WITH (fastupdate = off);
