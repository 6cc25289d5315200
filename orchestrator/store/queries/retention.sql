-- Retention: what the pruner deletes (orchestrator/retention.py). Each statement deletes one batch
-- of at most $3 rows (shapes: $2) and is its own transaction: no lock is held long, no delete
-- writes WAL in one go, and two pruners take disjoint rows (SKIP LOCKED) instead of waiting.
-- $1: the retention in seconds; $2: now (NULL: the server's clock; tests pass one).

-- Jobs of pool $4 that ended longer ago than the retention, and only those: a queued, assigned
-- or running job is never deleted, whatever its age (finished_at is set only by an end, but the
-- state is checked too). Their idempotency keys go with them. Oldest first, through
-- jobs_finished_idx (pool, finished_at): a range of the index, where a scan of the table would
-- read the rows the batches before just deleted (dead until vacuumed) again and again.
-- name: job_prune_finished
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs
    WHERE pool = $4
      AND finished_at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)
      AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'expired')
    ORDER BY finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
);

-- Oldest first, through rejections_at_idx.
-- name: rejection_prune
DELETE FROM rejections WHERE id IN (
    SELECT id FROM rejections
    WHERE at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)
    ORDER BY at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
);

-- Runners gone for good: lost (or drained, then silent) and not seen for the retention, no
-- pool's leader (a foreign key) and holding no job. A runner that comes back registers anew.
-- An active runner is never deleted: capacity declares a silent one lost first.
-- name: runner_prune
DELETE FROM runners WHERE id IN (
    SELECT r.id FROM runners r
    WHERE r.state IN ('lost', 'draining')
      AND r.last_seen_at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM pools p WHERE p.leader_runner_id = r.id)
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.runner_id = r.id AND j.state IN ('assigned', 'running'))
    LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
);

-- Records of provisioned workers spawned longer ago than the retention whose runner is gone:
-- never registered, deleted above, or lost (or drained) and not seen for the retention. The
-- provisioner forgets its own workers as they exit; these are what it never saw end (its pool
-- lost its provisioner, or its process died).
-- name: worker_prune_gone
DELETE FROM workers WHERE id IN (
    SELECT w.id FROM workers w LEFT JOIN runners r ON r.id = w.id
    WHERE w.spawned_at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)
      AND (r.id IS NULL
           OR (r.state IN ('lost', 'draining')
               AND r.last_seen_at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)))
    LIMIT $3
    FOR UPDATE OF w SKIP LOCKED
);

-- Shapes of pool $1 no live job uses now, at most $2 of them: candidates, read without any lock
-- (a pool of 100k tenants has 100k shapes to look through, and admission into it must not wait
-- for that); `job_shape_prune` deletes those still empty under the lock.
-- Each shape's queued jobs are looked up in jobs_queued_idx by its id, a probe per shape, and the
-- pool's assigned and running jobs (as many as its slots) are hashed once. `OFFSET 0` keeps the
-- probe a probe: as an anti join it is planned from the statistics, and those of the minute
-- before autovacuum analyzes a burst of shapes made it a read of the whole index per shape (a
-- pass over 100k new shapes ran into the 30 s statement timeout).
-- name: job_shape_prune_candidates
SELECT s.id FROM job_shapes s
WHERE s.pool = $1
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.shape_id = s.id AND j.state = 'queued' OFFSET 0)
  AND s.id NOT IN (SELECT j.shape_id FROM jobs j WHERE j.pool = $1 AND j.state IN ('assigned', 'running'))
LIMIT $2;

-- Of the candidate shapes $2 of pool $1, those no live job uses; the caller holds the pool's
-- admission lock (pool_admission_lock, taken by the statement before this one, so this one's
-- snapshot sees every admission into the pool committed). Under it no job of the pool can be
-- admitted meanwhile, so a shape found empty stays empty until this commits; a claim touches
-- only shapes with queued jobs. Deleting any bumps the pool's shape_generation: admission, which
-- reads the pool row under the same lock, then looks its shapes up again instead of trusting the
-- ids it remembered. Returns how many were deleted.
-- name: job_shape_prune
WITH gone AS (
    DELETE FROM job_shapes s
    WHERE s.id = ANY($2::bigint[]) AND s.pool = $1
      -- As the candidates were found (see there), so no statistics make this a scan per shape.
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.shape_id = s.id AND j.state = 'queued' OFFSET 0)
      AND s.id NOT IN (SELECT j.shape_id FROM jobs j WHERE j.pool = $1 AND j.state IN ('assigned', 'running'))
    RETURNING 1
), bumped AS (
    UPDATE pools SET shape_generation = shape_generation + 1
    WHERE name = $1 AND EXISTS (SELECT 1 FROM gone)
)
SELECT count(*) FROM gone;
