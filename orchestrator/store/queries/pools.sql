-- name: pool_get
SELECT * FROM pools WHERE name = $1;

-- Read by each admission batch: planned once per connection, as job_list_by_keys.
-- name: pool_get_many
SELECT * FROM pools WHERE name = ANY((SELECT $1::text[])::text[]);

-- name: pool_lock_for_change
SELECT * FROM pools WHERE name = $1 FOR NO KEY UPDATE;

-- What the pools file said of pool $1 when it was last applied.
-- name: pool_set_file_config
UPDATE pools SET file_config = $2 WHERE name = $1;

-- name: pool_list
SELECT * FROM pools ORDER BY name;

-- Every pool's name: what a process checks names from bus messages against (known_pools.py).
-- name: pool_names
SELECT name FROM pools;

-- The pool's shard (`dispatch_shard`) is set by its trigger from `shard` ($11) (migration 0015).
-- name: pool_upsert
INSERT INTO pools (name, max_concurrent, max_active, labels, allowed_plans, mode, paused, provisioner, max_workers,
                   reservation_timeout_s, shard, max_starts_per_s)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (name) DO UPDATE SET
    max_concurrent = EXCLUDED.max_concurrent,
    max_active = EXCLUDED.max_active,
    labels = EXCLUDED.labels,
    allowed_plans = EXCLUDED.allowed_plans,
    mode = EXCLUDED.mode,
    paused = EXCLUDED.paused,
    provisioner = EXCLUDED.provisioner,
    max_workers = EXCLUDED.max_workers,
    reservation_timeout_s = EXCLUDED.reservation_timeout_s,
    shard = EXCLUDED.shard,
    max_starts_per_s = EXCLUDED.max_starts_per_s,
    -- The next start under the old cap, rescaled to the new one (none without a cap): a slower
    -- cap does not allow a start early, a faster one does not keep the old wait.
    starts_tat = CASE WHEN EXCLUDED.max_starts_per_s IS NULL THEN NULL
                      WHEN pools.starts_tat > now() AND pools.max_starts_per_s IS NOT NULL
                      THEN now() + (pools.starts_tat - now()) * (pools.max_starts_per_s / EXCLUDED.max_starts_per_s)
                      ELSE pools.starts_tat END,
    updated_at = now()
RETURNING *;

-- name: pool_create_if_absent
INSERT INTO pools (name, labels) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING;

-- Serializes admissions into one pool, and pool changes with them, so the max_active check,
-- the runnability check and the insert see one configuration and one count.
-- name: pool_admission_lock
SELECT pg_advisory_xact_lock(hashtext('orch.admit'), hashtext($1));

-- name: pool_in_flight
SELECT count(*) FROM jobs WHERE pool = $1 AND state IN ('assigned', 'running');

-- name: pool_active_many
SELECT pool, count(*) AS active FROM jobs
WHERE pool = ANY($1::text[]) AND state IN ('queued', 'assigned', 'running')
GROUP BY pool;

-- How many jobs of a pool ended in the last minute: its drain rate, behind Retry-After.
-- name: pool_drained_last_minute
SELECT count(*) FROM jobs
WHERE pool = $1 AND finished_at > coalesce($2::timestamptz, now()) - interval '60 seconds';

-- Free capacity of a pool: the lesser of its cap's headroom and its runners' free slots (in
-- leader mode, its leader's).
-- name: pool_free
WITH p AS (SELECT max_concurrent, mode, leader_runner_id FROM pools WHERE name = $1),
     busy AS (SELECT runner_id, count(*) AS n FROM jobs
              WHERE pool = $1 AND state IN ('assigned', 'running') GROUP BY runner_id),
     slots AS (SELECT coalesce(sum(greatest(r.slots - coalesce(b.n, 0), 0)), 0) AS free
               FROM p, runners r LEFT JOIN busy b ON b.runner_id = r.id
               WHERE r.pool = $1 AND r.state = 'active' AND (p.mode <> 'leader' OR r.id = p.leader_runner_id))
SELECT CASE WHEN p.max_concurrent < 0 THEN slots.free
            ELSE least(slots.free, greatest(p.max_concurrent - (SELECT coalesce(sum(n), 0) FROM busy), 0))
       END AS free
FROM p, slots;

-- Pools with queued jobs, with their dispatch shards: what the dispatcher's safety sweep visits.
-- name: pool_list_with_queued
SELECT p.name, p.dispatch_shard FROM pools p
WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.pool = p.name AND j.state = 'queued');

-- Every pool's dispatch shard ($1 NULL), or pool $1's.
-- name: pool_list_shards
SELECT name, dispatch_shard FROM pools WHERE $1::text IS NULL OR name = $1;

-- Elect the leader of each leader-mode pool ($1, or every pool when NULL): its oldest active
-- runner without a taint (the oldest, so a newcomer never takes over: no churn). A pool no
-- longer in leader mode forgets its leader. Returns only the pools whose leader changed; the
-- row locks serialize concurrent elections, and the re-checked WHERE drops a repeated change.
-- Elections of one pool take turns: its row locked first, so the election statement after it
-- reads the runners as they are once the previous one committed (a statement that waited only in
-- its UPDATE would write the leader it chose from before that commit: a tainted runner).
-- name: pool_lock_for_election
SELECT name FROM pools
WHERE ($1::text IS NULL OR name = $1) AND (mode = 'leader' OR leader_runner_id IS NOT NULL)
ORDER BY name FOR UPDATE;

-- name: pool_elect_leader
WITH elected AS (
    SELECT p.name, p.leader_runner_id AS previous,
           CASE WHEN p.mode = 'leader' THEN (
               SELECT r.id FROM runners r
               WHERE r.pool = p.name AND r.state = 'active' AND cardinality(r.taints) = 0
               ORDER BY r.created_at, r.id LIMIT 1)
           END AS leader
    FROM pools p
    WHERE ($1::text IS NULL OR p.name = $1) AND (p.mode = 'leader' OR p.leader_runner_id IS NOT NULL)
)
UPDATE pools p SET leader_runner_id = e.leader
FROM elected e
WHERE p.name = e.name AND p.leader_runner_id IS DISTINCT FROM e.leader
RETURNING p.name AS pool, e.previous, e.leader;

-- name: pool_list_provisioned
SELECT name, provisioner, max_workers FROM pools WHERE provisioner IS NOT NULL ORDER BY name;

-- What a provisioned pool needs: runnable queued jobs (counted up to $2: no more workers than
-- that are ever spawned at once), jobs in flight, and the free slots of its registered runners;
-- and in how many seconds its first queued job not due yet is (`due_in_s`, NULL: none), for a
-- timer: a delayed job is demand only from then.
-- Flow control (migration 0016): a job under a concurrency key or a rate limit is demand only as
-- far as its lane has room now (its key's room, its rate limit's starts left), and a rate limit's
-- next start is a due time too: no worker is spawned for a job its key would hold back.
-- name: pool_fleet_demand
WITH busy AS (SELECT runner_id, count(*) AS n FROM jobs
              WHERE pool = $1 AND state IN ('assigned', 'running') GROUP BY runner_id),
     lanes AS (
         SELECT (SELECT count(*) FROM (SELECT 1 FROM jobs j
                                       WHERE j.shape_id = s.id AND j.state = 'queued'
                                         AND (j.not_before IS NULL OR j.not_before <= now())
                                       LIMIT $2) q) AS due,
                least(CASE WHEN s.concurrency_key = '' THEN $2
                           ELSE greatest(0, concurrency_key_room(s.concurrency_key)) END,
                      coalesce(r.room, $2)) AS room,
                CASE WHEN r.room = 0 THEN r.next_at END AS next_at
         FROM job_shapes s
         LEFT JOIN LATERAL (
             SELECT gcra_room(l.tat, clock_timestamp(), l.period_s / l.max_starts, l.burst) AS room,
                    l.tat - make_interval(secs => (l.burst - 1) * l.period_s / l.max_starts) AS next_at
             FROM rate_limits l WHERE l.key = s.rate_limit_key
         ) r ON true
         WHERE s.pool = $1 AND (s.concurrency_key <> '' OR s.rate_limit_key <> '')
     )
SELECT p.name, p.provisioner, p.max_workers, p.max_concurrent, p.labels, p.paused,
       least($2::bigint, (SELECT count(*) FROM (SELECT 1 FROM jobs j
                                                WHERE j.pool = $1 AND j.state = 'queued'
                                                  AND (j.not_before IS NULL OR j.not_before <= now())
                                                  AND j.concurrency_key IS NULL AND j.rate_limit_key IS NULL
                                                LIMIT $2) q)
                         + (SELECT coalesce(sum(least(l.due, l.room)), 0) FROM lanes l)::bigint) AS queued,
       (SELECT coalesce(sum(n), 0)::bigint FROM busy) AS in_flight,
       (SELECT coalesce(sum(greatest(r.slots - coalesce(b.n, 0), 0)), 0)::bigint
        FROM runners r LEFT JOIN busy b ON b.runner_id = r.id
        WHERE r.pool = $1 AND r.state = 'active') AS free_slots,
       extract(epoch FROM least(
           (SELECT min(j.not_before) FROM jobs j WHERE j.pool = $1 AND j.state = 'queued' AND j.not_before > now()),
           (SELECT min(l.next_at) FROM lanes l WHERE l.due > 0)
       ) - now())::float8 AS due_in_s
FROM pools p WHERE p.name = $1;

-- Deleting a pool: its row locked against every other writer, runner registrations included
-- (their foreign key needs a share lock on it), until the deletion commits.
-- name: pool_lock_for_delete
SELECT name FROM pools WHERE name = $1 FOR UPDATE;

-- What still uses pool $1: its live jobs by state, and its runners that are not lost.
-- name: pool_usage
SELECT count(*) FILTER (WHERE j.state = 'queued') AS queued,
       count(*) FILTER (WHERE j.state = 'assigned') AS assigned,
       count(*) FILTER (WHERE j.state = 'running') AS running,
       (SELECT coalesce(array_agg(r.id ORDER BY r.id), '{}') FROM runners r
        WHERE r.pool = $1 AND r.state <> 'lost') AS runners
FROM jobs j WHERE j.pool = $1 AND j.state IN ('queued', 'assigned', 'running');

-- Delete pool $1 and what only refers to it: its ended jobs, their shapes, its lost runners and
-- its provisioner's worker records. One statement: the foreign keys between them (runners and
-- pools refer to each other) are checked once, at its end.
-- name: pool_delete
WITH gone_jobs AS (DELETE FROM jobs WHERE pool = $1 RETURNING 1),
     gone_shapes AS (DELETE FROM job_shapes WHERE pool = $1),
     gone_workers AS (DELETE FROM workers WHERE pool = $1),
     gone_runners AS (DELETE FROM runners WHERE pool = $1)
DELETE FROM pools WHERE name = $1
RETURNING *, (SELECT count(*) FROM gone_jobs) AS deleted_jobs;
