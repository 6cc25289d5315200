-- Read when /metrics is scraped (and by the dashboard): the state of every pool, from the job
-- rows themselves (Postgres is the truth; nothing is counted in memory). One pass over the
-- active jobs through jobs_active_idx; pools and runners are small.
-- name: metrics_pools
WITH j AS (
    SELECT pool,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state <> 'queued') AS in_flight,
           count(*) FILTER (WHERE state = 'queued' AND not_before > now()) AS deferred,
           -- A job waits for a slot from its due time (a delayed job's run_at, a retry's backoff end).
           min(coalesce(not_before, created_at)) FILTER (WHERE state = 'queued' AND (not_before IS NULL OR not_before <= now()))
               AS oldest
    FROM jobs WHERE state IN ('queued', 'assigned', 'running')
    GROUP BY pool
), busy AS (
    SELECT runner_id, count(*) AS n FROM jobs WHERE state IN ('assigned', 'running') GROUP BY runner_id
), slots AS (
    SELECT r.pool, sum(greatest(r.slots - coalesce(b.n, 0), 0))::bigint AS free
    FROM runners r LEFT JOIN busy b ON b.runner_id = r.id
    WHERE r.state = 'active'
    GROUP BY r.pool
), held AS (
    -- Queued jobs of the lanes a flow control holds back now: a concurrency key at its limit, or a
    -- rate limit with no start left (the claim passes over them).
    SELECT s.pool, count(*) FILTER (WHERE f.reason = 'concurrency_key') AS by_key,
           count(*) FILTER (WHERE f.reason = 'rate_limit') AS by_rate
    FROM job_shapes s
    CROSS JOIN LATERAL (SELECT CASE
        WHEN s.concurrency_key <> '' AND concurrency_key_room(s.concurrency_key) <= 0 THEN 'concurrency_key'
        WHEN s.rate_limit_key <> '' AND (SELECT gcra_room(r.tat, clock_timestamp(), r.period_s / r.max_starts, r.burst)
                                         FROM rate_limits r WHERE r.key = s.rate_limit_key) = 0 THEN 'rate_limit'
        END AS reason) f
    JOIN jobs q ON q.shape_id = s.id AND q.state = 'queued'
    WHERE (s.concurrency_key <> '' OR s.rate_limit_key <> '') AND f.reason IS NOT NULL
    GROUP BY s.pool
)
SELECT p.name AS pool, p.max_concurrent, p.max_active, p.paused::int AS paused,
       coalesce(j.queued, 0) AS queued, coalesce(j.in_flight, 0) AS in_flight, coalesce(j.deferred, 0) AS deferred,
       CASE WHEN p.max_concurrent < 0 THEN coalesce(s.free, 0)
            ELSE least(coalesce(s.free, 0), greatest(p.max_concurrent - coalesce(j.in_flight, 0), 0))
       END AS free,
       coalesce(extract(epoch FROM clock_timestamp() - j.oldest), 0)::float8 AS oldest_queued_s,
       coalesce(h.by_key, 0) AS held_by_key, coalesce(h.by_rate, 0) AS held_by_rate
FROM pools p LEFT JOIN j ON j.pool = p.name LEFT JOIN slots s ON s.pool = p.name LEFT JOIN held h ON h.pool = p.name
ORDER BY p.name;

-- name: metrics_runners
SELECT pool, state, count(*) AS runners, sum(slots)::bigint AS slots
FROM runners GROUP BY pool, state ORDER BY pool, state;
