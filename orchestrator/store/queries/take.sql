-- The take protocol (seed 003), and what holds a queued job back ("why is my job waiting?").

-- A take client polls job $1: it is heard from now, and, with $2 > 0 seconds of long poll, until
-- then (a later deadline already recorded stands). With $3 (the runner it is about to be handed)
-- the client takes it: from then on the job is the client's and abandonment no longer applies.
-- `taken_at` is the latest take, so a retried take can tell it already took this assignment.
-- Only a live job is touched: nothing comes back for one that expired or ended meanwhile, nor,
-- when taking, for one no longer held by runner $3.
-- name: job_poll
UPDATE jobs SET
    last_polled_at = greatest(last_polled_at, clock_timestamp() + make_interval(secs => $2)),
    taken_at = CASE WHEN $3::text IS NULL THEN taken_at ELSE clock_timestamp() END
WHERE id = $1 AND state IN ('queued', 'assigned', 'running')
  AND ($3::text IS NULL OR (state IN ('assigned', 'running') AND runner_id = $3::text))
RETURNING *;

-- Live jobs enqueued through Servo's wire format under unique_id $1, newest first.
-- name: job_list_servo_live
SELECT * FROM jobs
WHERE payload ? 'servo' AND payload #>> '{servo,unique_id}' = $1 AND state IN ('queued', 'assigned', 'running')
ORDER BY id DESC
LIMIT 16;

-- name: runner_get
SELECT * FROM runners WHERE id = $1;
-- The runners of pool $1 a job needing labels $2 could use: how many there are (not lost), how
-- many could take it now (active, untainted, offering every label), their slots and busy slots.
-- name: runner_capacity_for_labels
WITH busy AS (SELECT runner_id, count(*) AS n FROM jobs
              WHERE pool = $1 AND state IN ('assigned', 'running') GROUP BY runner_id),
     r AS (SELECT r.*, coalesce(b.n, 0) AS busy,
                  r.state = 'active' AND cardinality(r.taints) = 0 AND r.labels @> $2::text[] AS usable
           FROM runners r LEFT JOIN busy b ON b.runner_id = r.id
           WHERE r.pool = $1 AND r.state <> 'lost')
SELECT count(*) AS runners,
       count(*) FILTER (WHERE usable) AS matching,
       coalesce(sum(slots) FILTER (WHERE usable), 0) AS matching_slots,
       coalesce(sum(least(busy, slots)) FILTER (WHERE usable), 0) AS matching_busy
FROM r;

-- The queued jobs that compete with job $1 for the same slots (its own shape, and every shape of
-- its pool that a runner able to take job $1 could take instead), and how many of them go first:
-- a higher priority, or as high and older. The claim order is priority, then round-robin across
-- shapes, so this is the position in the worst case; jobs not due yet (delayed, or in a retry
-- backoff) compete with nothing until they are. And how long its own wait for its due time has to run.
-- name: job_queue_position
WITH me AS (SELECT id, pool, shape_id, priority, labels, not_before FROM jobs WHERE id = $1),
     rivals AS (
         SELECT s.id FROM job_shapes s, me
         WHERE s.pool = me.pool AND (s.id = me.shape_id OR EXISTS (
             SELECT 1 FROM runners r
             WHERE r.pool = me.pool AND r.state <> 'lost' AND r.labels @> me.labels AND r.labels @> s.labels))
     )
SELECT count(*) AS competing,
       count(*) FILTER (WHERE j.priority > me.priority OR (j.priority = me.priority AND j.id < me.id)) AS ahead,
       (SELECT greatest(extract(epoch FROM not_before - now()), 0) FROM me)::float8 AS backoff_s
FROM me, rivals JOIN jobs j ON j.shape_id = rivals.id AND j.state = 'queued'
WHERE j.id = me.id OR j.not_before IS NULL OR j.not_before <= now();
