-- Flow control outside the claim (the claim is migration 0016's claim_step): concurrency keys as
-- admission sees them, rate limits as operators set them, and what holds a queued job back.

-- Take the locks of concurrency keys $1 (held to the commit; the claim takes them too).
-- name: concurrency_keys_lock
SELECT concurrency_keys_lock($1::text[]);

-- Each of keys $1: its live jobs counted, queued and in flight (assigned or running), and the
-- smallest concurrency_limit among them (the key's limit; NULL: no live job).
-- name: concurrency_key_counts
SELECT k AS key,
       (SELECT count(*) FROM jobs j WHERE j.concurrency_key = k AND j.state = 'queued')::integer AS queued,
       (SELECT count(*) FROM jobs j WHERE j.concurrency_key = k AND j.state IN ('assigned', 'running'))::integer AS held,
       (SELECT min(j.concurrency_limit) FROM jobs j
        WHERE j.concurrency_key = k AND j.state IN ('queued', 'assigned', 'running')) AS lowest_limit
FROM unnest($1::text[]) AS k;

-- The live jobs of keys $1, oldest first.
-- name: concurrency_key_members
SELECT id, concurrency_key, state FROM jobs
WHERE concurrency_key = ANY($1::text[]) AND state IN ('queued', 'assigned', 'running')
ORDER BY id;

-- The pools where jobs of keys $1 wait (queued): when a job of the key ends, its room is theirs too.
-- `OFFSET 0`: a probe of jobs_queued_idx per shape, whatever the statistics (retention.sql says why).
-- name: concurrency_key_pools
SELECT DISTINCT s.pool FROM job_shapes s
WHERE s.concurrency_key = ANY($1::text[])
  AND EXISTS (SELECT 1 FROM jobs j WHERE j.shape_id = s.id AND j.state = 'queued' OFFSET 0);

-- What holds queued job $1 back by flow control: its concurrency key's limit and the jobs holding
-- it (at most 10 named), its rate limit's next start, and its pool's next start under
-- max_starts_per_s (NULL where none applies, or nothing holds it).
-- name: job_flow_waiting
WITH me AS (SELECT id, pool, concurrency_key, rate_limit_key FROM jobs WHERE id = $1)
SELECT me.concurrency_key,
       (SELECT min(j.concurrency_limit) FROM jobs j
        WHERE j.concurrency_key = me.concurrency_key AND j.state IN ('queued', 'assigned', 'running')) AS key_limit,
       (SELECT count(*) FROM jobs j
        WHERE j.concurrency_key = me.concurrency_key AND j.state IN ('assigned', 'running'))::integer AS key_held,
       ARRAY(SELECT j.id FROM jobs j
             WHERE j.concurrency_key = me.concurrency_key AND j.state IN ('assigned', 'running')
             ORDER BY j.id LIMIT 10) AS key_holders,
       me.rate_limit_key,
       (SELECT gcra_room(r.tat, clock_timestamp(), r.period_s / r.max_starts, r.burst)
        FROM rate_limits r WHERE r.key = me.rate_limit_key) AS rate_room,
       (SELECT r.tat - make_interval(secs => (r.burst - 1) * r.period_s / r.max_starts)
        FROM rate_limits r WHERE r.key = me.rate_limit_key) AS rate_next_at,
       p.max_starts_per_s,
       CASE WHEN p.max_starts_per_s IS NOT NULL AND p.starts_tat > clock_timestamp() THEN p.starts_tat END AS pool_next_at
FROM me JOIN pools p ON p.name = me.pool;

-- name: rate_limit_known
SELECT key FROM rate_limits WHERE key = ANY($1::text[]);

-- Create or change rate limit $1: at most $2 starts per $3 seconds, $4 at once. A change keeps its
-- state: starts already made still count, rescaled to the new interval (a key that owed an hour
-- at one start an hour owes a minute at one a minute).
-- name: rate_limit_put
INSERT INTO rate_limits AS r (key, max_starts, period_s, burst) VALUES ($1, $2, $3, $4)
ON CONFLICT (key) DO UPDATE SET
    max_starts = EXCLUDED.max_starts,
    period_s = EXCLUDED.period_s,
    burst = EXCLUDED.burst,
    tat = CASE WHEN r.tat > now()
               THEN now() + (r.tat - now()) * ((EXCLUDED.period_s / EXCLUDED.max_starts) / (r.period_s / r.max_starts))
               ELSE r.tat END,
    updated_at = now()
RETURNING new.key, new.max_starts, new.period_s, new.burst, new.created_at, new.updated_at,
          gcra_room(new.tat, clock_timestamp(), new.period_s / new.max_starts, new.burst) AS starts_left,
          new.tat - make_interval(secs => (new.burst - 1) * new.period_s / new.max_starts) AS next_start_at,
          old.key IS NULL AS created;

-- name: rate_limit_get
SELECT key, max_starts, period_s, burst, created_at, updated_at,
       gcra_room(tat, clock_timestamp(), period_s / max_starts, burst) AS starts_left,
       tat - make_interval(secs => (burst - 1) * period_s / max_starts) AS next_start_at
FROM rate_limits WHERE key = $1;

-- Every rate limit, by key.
-- name: rate_limit_list
SELECT key, max_starts, period_s, burst, created_at, updated_at,
       gcra_room(tat, clock_timestamp(), period_s / max_starts, burst) AS starts_left,
       tat - make_interval(secs => (burst - 1) * period_s / max_starts) AS next_start_at
FROM rate_limits ORDER BY key;

-- Delete rate limit $1, as it stood (no row: none was set). Jobs naming it that wait start without
-- it from then on: the claim reads a missing key as no limit (migration 0016, `coalesce`).
-- name: rate_limit_delete
DELETE FROM rate_limits WHERE key = $1
RETURNING key, max_starts, period_s, burst, created_at, updated_at,
          gcra_room(tat, clock_timestamp(), period_s / max_starts, burst) AS starts_left,
          tat - make_interval(secs => (burst - 1) * period_s / max_starts) AS next_start_at;

-- The pools where jobs of rate limit $1 wait (queued): woken when it is lifted or changed, as
-- their step's timer is set for the start the old limit allowed next.
-- name: rate_limit_key_pools
SELECT DISTINCT s.pool FROM job_shapes s
WHERE s.rate_limit_key = $1
  AND EXISTS (SELECT 1 FROM jobs j WHERE j.shape_id = s.id AND j.state = 'queued' OFFSET 0);
