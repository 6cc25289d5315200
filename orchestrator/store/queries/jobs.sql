-- Reads of jobs and their shapes. Every change of a job's state is in transitions.sql.

-- name: job_get
SELECT * FROM jobs WHERE id = $1;

-- name: job_get_many
SELECT * FROM jobs WHERE id = ANY($1::uuid[]);

-- The jobs holding any of these keys (each admission batch's). The array is read through a
-- sub-select, so the plan is made once per connection (see transitions.sql's head).
-- name: job_list_by_keys
SELECT * FROM jobs WHERE key = ANY((SELECT $1::text[])::text[]);

-- name: job_list
SELECT * FROM jobs
WHERE ($1::text IS NULL OR pool = $1)
  AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR key = $3)
  AND ($5::text IS NULL OR tenant = $5)
ORDER BY id DESC
LIMIT $4;

-- A lane: what jobs need (pool, labels, tenant, tolerations) and the keys they are under ('': none).
-- name: job_shape_insert
INSERT INTO job_shapes (pool, labels, tenant, tolerations, concurrency_key, rate_limit_key)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (pool, labels, tenant, tolerations, concurrency_key, rate_limit_key) DO NOTHING
RETURNING id;

-- name: job_shape_get
SELECT id FROM job_shapes
WHERE pool = $1 AND labels = $2 AND tenant = $3 AND tolerations = $4 AND concurrency_key = $5 AND rate_limit_key = $6;

-- The different (labels, plan) a pool's queued jobs need: what a pool change must re-check.
-- name: job_queued_shapes
SELECT DISTINCT labels, plan FROM jobs WHERE pool = $1 AND state = 'queued';

-- name: job_count_by_pool
SELECT count(*) FROM jobs WHERE pool = $1;
