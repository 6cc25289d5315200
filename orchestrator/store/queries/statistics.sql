-- Planner statistics brought up to date after a burst of admissions (orchestrator/store/statistics.py).

-- name: jobs_analyze
ANALYZE jobs;

-- name: job_shapes_analyze
ANALYZE job_shapes;

-- How many rows the statistics of table $1 know.
-- name: table_rows_known
SELECT reltuples FROM pg_class WHERE oid = $1::regclass;
