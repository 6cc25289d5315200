-- Transition timestamps use clock_timestamp(), not the transaction start: they order events as
-- they committed (a slot freed, then taken), so the history can be checked and measured.

-- Admit a batch in one statement. Labels and tolerations travel as JSON text (one array per
-- job): Postgres arrays cannot be ragged, so a text[][] parameter could not carry them. The
-- jsonb columns are not returned: the caller has them, and decoding them back cost a third of
-- the batch.
-- name: job_insert_many
INSERT INTO jobs (id, key, spec, pool, labels, plan, tenant, priority, payload, timeout_s,
                  max_attempts, abandon_after_s, token_hash, trace_context, tolerations, shape_id)
SELECT r.id, r.key, r.spec, r.pool, ARRAY(SELECT jsonb_array_elements_text(r.labels::jsonb)), r.plan, r.tenant,
       r.priority, r.payload, r.timeout_s, r.max_attempts, r.abandon_after_s, r.token_hash, r.trace_context,
       ARRAY(SELECT jsonb_array_elements_text(r.tolerations::jsonb)), r.shape_id
FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[], $7::text[], $8::integer[],
            $9::jsonb[], $10::float8[], $11::integer[], $12::float8[], $13::bytea[], $14::jsonb[], $15::text[],
            $16::bigint[])
     AS r(id, key, spec, pool, labels, plan, tenant, priority, payload, timeout_s, max_attempts,
          abandon_after_s, token_hash, trace_context, tolerations, shape_id)
ON CONFLICT (key) DO NOTHING
RETURNING id, key, pool, labels, plan, tenant, priority, timeout_s, max_attempts, abandon_after_s, tolerations, state,
          attempt, runner_id, exit_code, reason, created_at, assigned_at, started_at, finished_at;

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

-- Claim up to $3 of the best queued jobs of pool $1 that runners with labels $2 and taints $5
-- can take (a job tolerating every one of the taints; any job when there are none).
-- Only the shapes those runners match are visited, each through its own index range, so the
-- cost does not grow with jobs queued for other shapes (seed 004). Order: priority, then
-- round-robin across shapes (the n-th job of each shape before the n+1-th of any; the shape
-- served longest ago first), then age. The caller holds the pool row lock, so no other claimer
-- of this pool runs concurrently; `state = 'queued'` re-checks rows cancelled meanwhile.
-- $4 is the claiming leader's term (NULL without a lease), recorded with the claim.
-- name: job_claim
WITH shapes AS (
    SELECT id, served_at FROM job_shapes
    WHERE pool = $1 AND labels <@ $2::text[] AND tolerations @> $5::text[]
), heads AS (
    SELECT q.id, q.priority, s.served_at,
           row_number() OVER (PARTITION BY s.id, q.priority ORDER BY q.id) AS turn
    FROM shapes s
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority FROM jobs j
        WHERE j.shape_id = s.id AND j.state = 'queued'
          AND (j.not_before IS NULL OR j.not_before <= now())
        ORDER BY j.priority DESC, j.id
        LIMIT $3
    ) q
), picked AS (
    SELECT id FROM heads ORDER BY priority DESC, turn, served_at NULLS FIRST, id LIMIT $3
)
UPDATE jobs j SET state = 'assigned', assigned_at = clock_timestamp(), not_before = NULL, claim_epoch = $4
FROM picked WHERE j.id = picked.id AND j.state = 'queued'
RETURNING j.id, j.pool, j.shape_id, j.attempt, j.payload, j.timeout_s, j.trace_context, j.priority,
          j.created_at, j.assigned_at;

-- name: job_shape_served
UPDATE job_shapes SET served_at = clock_timestamp() WHERE id = ANY($1::bigint[]);

-- name: job_shape_insert
INSERT INTO job_shapes (pool, labels, tenant, tolerations) VALUES ($1, $2, $3, $4)
ON CONFLICT (pool, labels, tenant, tolerations) DO NOTHING
RETURNING id;

-- name: job_shape_get
SELECT id FROM job_shapes WHERE pool = $1 AND labels = $2 AND tenant = $3 AND tolerations = $4;

-- name: job_set_runner
UPDATE jobs SET runner_id = r.runner_id
FROM unnest($1::uuid[], $2::text[]) AS r(job_id, runner_id)
WHERE jobs.id = r.job_id;

-- The hand-off failed (no ack): back to the queue, not counted as an attempt.
-- name: job_unassign
UPDATE jobs SET state = 'queued', runner_id = NULL, assigned_at = NULL
WHERE id = $1 AND runner_id = $2 AND state = 'assigned'
RETURNING pool;

-- Assignments not started within $1 seconds: the dispatcher died mid hand-off, or the runner's
-- start request failed. Back to the queue, not an attempt; a late start request is refused.
-- name: job_requeue_unstarted
UPDATE jobs SET state = 'queued', runner_id = NULL, assigned_at = NULL
WHERE state = 'assigned' AND assigned_at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)
RETURNING id, pool;

-- Permission to start: only the runner a job is assigned to, for that very attempt.
-- Batched: one row per request, as arrays.
-- name: job_start_many
UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, started_at = clock_timestamp()
FROM unnest($1::uuid[], $2::text[], $3::int[]) AS r(id, runner_id, attempt)
WHERE j.id = r.id AND j.runner_id = r.runner_id AND j.state = 'assigned' AND j.attempt + 1 = r.attempt
RETURNING j.id, j.pool;

-- The end of an attempt, as its runner reports it. Batched like job_start_many.
-- name: job_finish_many
UPDATE jobs j SET state = r.state, exit_code = r.exit_code, reason = r.reason, finished_at = clock_timestamp()
FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[], $6::text[])
     AS r(id, runner_id, attempt, state, exit_code, reason)
WHERE j.id = r.id AND j.runner_id = r.runner_id AND j.attempt = r.attempt AND j.state IN ('assigned', 'running')
RETURNING j.id, j.pool;

-- name: job_cancel_queued
UPDATE jobs SET state = 'cancelled', reason = 'cancelled', finished_at = clock_timestamp()
WHERE id = $1 AND state = 'queued'
RETURNING *;

-- Jobs held against runners that no longer hold them (lost, or restarted and not running
-- them): an assigned job goes back to the queue as if never handed off; a running one is an
-- attempt spent, requeued after a backoff (1 s, 2 s, 4 s ... 60 s) while attempts remain,
-- failed with `runner_lost` otherwise.
-- name: job_release_from_runners
UPDATE jobs SET
    state = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN 'queued' ELSE 'failed' END,
    not_before = CASE WHEN state = 'running' AND attempt < max_attempts
                      THEN now() + make_interval(secs => least(60, power(2, attempt - 1)))
                      END,
    reason = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN reason ELSE 'runner_lost' END,
    finished_at = CASE WHEN state = 'assigned' OR attempt < max_attempts THEN NULL ELSE clock_timestamp() END,
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
