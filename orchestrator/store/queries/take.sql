-- The take protocol (seed 003).

-- A take client polls job $1: it is heard from now, and, with $2 > 0 seconds of long poll, until
-- then (a later deadline already recorded stands). With $3 (the runner it is about to be handed)
-- the client takes it: from then on the job is the client's and abandonment no longer applies.
-- Only a live job is touched: nothing comes back for one that expired or ended meanwhile, nor,
-- when taking, for one no longer held by runner $3.
-- name: job_poll
UPDATE jobs SET
    last_polled_at = greatest(last_polled_at, clock_timestamp() + make_interval(secs => $2)),
    taken_at = CASE WHEN $3::text IS NULL THEN taken_at ELSE coalesce(taken_at, clock_timestamp()) END
WHERE id = $1 AND state IN ('queued', 'assigned', 'running')
  AND ($3::text IS NULL OR (state IN ('assigned', 'running') AND runner_id = $3::text))
RETURNING *;

-- Take-style jobs whose client has not polled for abandon_after_s (counted from admission until
-- the first poll), and has not taken its runner: expired, releasing the slot a runner holds for it.
-- name: job_expire_abandoned
UPDATE jobs SET state = 'expired', reason = 'abandoned', finished_at = clock_timestamp()
WHERE abandon_after_s IS NOT NULL AND taken_at IS NULL AND state IN ('queued', 'assigned', 'running')
  AND coalesce(last_polled_at, created_at) < coalesce($1::timestamptz, now()) - make_interval(secs => abandon_after_s)
RETURNING id, pool, runner_id, attempt;

-- Live jobs enqueued through Servo's wire format under unique_id $1, newest first.
-- name: job_list_servo_live
SELECT * FROM jobs
WHERE payload ? 'servo' AND payload #>> '{servo,unique_id}' = $1 AND state IN ('queued', 'assigned', 'running')
ORDER BY id DESC
LIMIT 16;

-- name: runner_get
SELECT * FROM runners WHERE id = $1;
