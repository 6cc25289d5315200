-- Admit a batch in one statement. Labels travel as JSON text (one array per job): Postgres arrays
-- cannot be ragged, so a text[][] parameter could not carry them. The jsonb columns are not
-- returned: the caller has them, and decoding them back cost a third of the batch.
-- name: job_insert_many
INSERT INTO jobs (id, key, spec, pool, labels, plan, tenant, priority, payload, timeout_s,
                  max_attempts, abandon_after_s, token_hash, trace_context)
SELECT r.id, r.key, r.spec, r.pool, ARRAY(SELECT jsonb_array_elements_text(r.labels::jsonb)), r.plan, r.tenant,
       r.priority, r.payload, r.timeout_s, r.max_attempts, r.abandon_after_s, r.token_hash, r.trace_context
FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[], $7::text[], $8::integer[],
            $9::jsonb[], $10::float8[], $11::integer[], $12::float8[], $13::bytea[], $14::jsonb[])
     AS r(id, key, spec, pool, labels, plan, tenant, priority, payload, timeout_s, max_attempts,
          abandon_after_s, token_hash, trace_context)
ON CONFLICT (key) DO NOTHING
RETURNING id, key, pool, labels, plan, tenant, priority, timeout_s, max_attempts, abandon_after_s, state, attempt,
          runner_id, exit_code, reason, created_at, assigned_at, started_at, finished_at;

-- name: job_get
SELECT * FROM jobs WHERE id = $1;

-- name: job_list_by_keys
SELECT * FROM jobs WHERE key = ANY($1::text[]);

-- name: job_list
SELECT * FROM jobs
WHERE ($1::text IS NULL OR pool = $1)
  AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR key = $3)
ORDER BY id DESC
LIMIT $4;

-- Claim up to $3 of the best queued jobs of pool $1 that runners with labels $2 can take.
-- SKIP LOCKED: concurrent claimers never wait on, or take, the same row.
-- name: job_claim
WITH picked AS (
    SELECT id FROM jobs
    WHERE pool = $1 AND state = 'queued' AND labels <@ $2::text[]
    ORDER BY priority DESC, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET state = 'assigned', assigned_at = now()
FROM picked WHERE j.id = picked.id
RETURNING j.id, j.pool, j.attempt, j.payload, j.timeout_s, j.trace_context, j.priority;

-- name: job_set_runner
UPDATE jobs SET runner_id = r.runner_id
FROM unnest($1::uuid[], $2::text[]) AS r(job_id, runner_id)
WHERE jobs.id = r.job_id;

-- The hand-off failed (no ack): back to the queue, not counted as an attempt.
-- name: job_unassign
UPDATE jobs SET state = 'queued', runner_id = NULL, assigned_at = NULL
WHERE id = $1 AND runner_id = $2 AND state = 'assigned'
RETURNING pool;

-- Permission to start: only the runner the job is assigned to, for that very attempt.
-- name: job_start
UPDATE jobs SET state = 'running', attempt = attempt + 1, started_at = now()
WHERE id = $1 AND runner_id = $2 AND state = 'assigned' AND attempt + 1 = $3
RETURNING pool, attempt;

-- name: job_finish
UPDATE jobs SET state = $4, exit_code = $5, reason = $6, finished_at = now()
WHERE id = $1 AND runner_id = $2 AND attempt = $3 AND state IN ('assigned', 'running')
RETURNING pool, state;

-- name: job_cancel_queued
UPDATE jobs SET state = 'cancelled', reason = 'cancelled', finished_at = now()
WHERE id = $1 AND state = 'queued'
RETURNING *;

-- Jobs held against runners that no longer hold them (lost, or restarted and not running
-- them): an assigned job goes back to the queue as if never handed off; a running one is an
-- attempt spent, requeued while attempts remain, failed otherwise.
-- name: job_release_from_runners
UPDATE jobs SET
    state = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN 'queued' ELSE 'failed' END,
    reason = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN reason ELSE 'runner_lost' END,
    finished_at = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN NULL ELSE now() END,
    runner_id = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN NULL ELSE runner_id END,
    assigned_at = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN NULL ELSE assigned_at END
WHERE runner_id = ANY($1::text[]) AND state IN ('assigned', 'running')
  AND NOT (id = ANY($2::uuid[]))
RETURNING id, pool, state;

-- The different (labels, plan) a pool's queued jobs need: what a pool change must re-check.
-- name: job_queued_shapes
SELECT DISTINCT labels, plan FROM jobs WHERE pool = $1 AND state = 'queued';

-- A pool change made these queued jobs unrunnable: they end now, in the change's transaction.
-- name: job_fail_queued_shape
UPDATE jobs SET state = 'failed', reason = $4, finished_at = now()
WHERE pool = $1 AND state = 'queued' AND labels = $2::text[] AND plan IS NOT DISTINCT FROM $3::text
RETURNING id, pool, attempt, reason;

-- name: job_count_by_pool
SELECT count(*) FROM jobs WHERE pool = $1;
