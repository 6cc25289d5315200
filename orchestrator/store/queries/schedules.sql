-- Schedules (migration 0014): their definitions, and what the dispatch leader's scheduler reads
-- and writes when it fires them.

-- A schedule with the state of the job it fired last (NULL once that job is gone).
-- name: schedule_get
SELECT s.*, j.state AS last_job_state FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id
WHERE s.name = $1;

-- name: schedule_list
SELECT s.*, j.state AS last_job_state FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id
ORDER BY s.name;

-- A PUT: the current row locked (NULL: a new one), so two PUTs take turns.
-- name: schedule_lock
SELECT * FROM schedules WHERE name = $1 FOR UPDATE;

-- name: schedule_upsert
INSERT INTO schedules AS s (name, cron, timezone, job, pool, overlap, catch_up, paused, handled_through, next_fire_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, job = EXCLUDED.job, pool = EXCLUDED.pool,
    overlap = EXCLUDED.overlap, catch_up = EXCLUDED.catch_up, paused = EXCLUDED.paused,
    handled_through = EXCLUDED.handled_through, next_fire_at = EXCLUDED.next_fire_at,
    version = s.version + 1, updated_at = now()
RETURNING (xmax = 0) AS created;

-- Deleting a schedule: it fires no more (a fire under way fails its compare-and-set); the jobs
-- it fired stay.
-- name: schedule_delete
DELETE FROM schedules WHERE name = $1 RETURNING name;

-- Schedules due at $1 (not paused), earliest first, at most $2.
-- name: schedule_list_due
SELECT * FROM schedules WHERE NOT paused AND next_fire_at <= $1 ORDER BY next_fire_at, name LIMIT $2;

-- The earliest fire time of any schedule not paused: what the scheduler's timer waits for.
-- name: schedule_next_fire
SELECT min(next_fire_at) FROM schedules WHERE NOT paused;

-- The jobs schedule $1 fired that are still queued, assigned or running, oldest fire first.
-- name: schedule_live_jobs
SELECT f.fire_at, j.id, j.pool, j.state FROM schedule_jobs f JOIN jobs j ON j.id = f.job_id
WHERE f.schedule = $1 AND j.state IN ('queued', 'assigned', 'running')
ORDER BY f.fire_at;

-- Forget the fired jobs of schedule $1 that have ended or are gone: what remains is bounded by
-- the live ones.
-- name: schedule_forget_ended
DELETE FROM schedule_jobs f
WHERE f.schedule = $1
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.job_id AND j.state IN ('queued', 'assigned', 'running'));

-- name: schedule_job_insert
INSERT INTO schedule_jobs (schedule, fire_at, job_id) VALUES ($1, $2, $3)
ON CONFLICT (schedule, fire_at) DO NOTHING;

-- A fire time handled: the schedule's position moves from $3 to $4 (its next fire time $5) only
-- if nobody moved it and nobody changed the schedule ($2, its version) meanwhile; with the job
-- fired ($6 at, $7 id) or why nothing was ($8 at, $9 reason). No row: lost the race, roll back.
-- name: schedule_advance
UPDATE schedules SET handled_through = $4, next_fire_at = $5,
                     last_fire_at = coalesce($6, last_fire_at), last_job_id = coalesce($7, last_job_id),
                     last_skip_at = coalesce($8, last_skip_at),
                     last_skip_reason = CASE WHEN $8::timestamptz IS NULL THEN last_skip_reason ELSE $9 END
WHERE name = $1 AND version = $2 AND handled_through = $3
RETURNING name;

-- The fencing check of a leader-only write: the shard's stored epoch, held shared to the
-- transaction's end (a successor's new term waits for it), as the claim does.
-- name: dispatch_epoch_check
SELECT epoch FROM dispatch_epochs WHERE shard = $1 FOR SHARE;
