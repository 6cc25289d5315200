-- The claim of migration 0022, made cheaper where most steps are: lanes without a concurrency key
-- or a rate limit. A statement planned once per session is still set up at every run, and setting
-- up the claim's statements was a third of a step's time in Postgres (perf, steps claiming one job
-- each); the keyed statements are the largest.
--
-- 1. A group of runners none of whose shapes is a key's lane plans its jobs with claim_order
--    alone (the shapes' statement says whether any is): no rooms, no keys to count.
-- 2. A plan without a key is claimed by one plain update: nothing to count again under a key's
--    lock, so neither the locks nor the rooms, rates and starts spent of the keyed claim. Its
--    jobs keep their places in the plan: a job that left the queue since (cancelled, taken)
--    leaves its slot unused, and the jobs after it go to the next slots (the keyed claim numbers
--    again the jobs still queued, whose rooms it counts anyway). No runner gets more than its
--    free slots either way.
-- 3. A step numbers each runner's free slots only up to the jobs it planned (claim_slots), not
--    up to its budget: for one job, 8 runners of 32 free slots had all 256 numbered and sorted
--    at dispatch's step limit of 256 (0018 bounded them by the budget; the jobs planned are
--    fewer still).
-- The keyed plan orders its jobs with claim_order too, over its lanes that have room.
--
-- A step claiming one job for 8 runners of 32 slots, its commit included: 1.9-2.0 ms before,
-- 1.3-1.5 ms after.
--
-- claim_slots: the k-th of `n` jobs goes to the runner with the most slots left after the first
-- k-1 (ties to the runner ranked first). No runner gives more than `n` of its slots, so its slots
-- past that are not numbered. Inlined into the statement that calls it (SQL, immutable).
CREATE FUNCTION claim_slots(p_ids text[], p_frees bigint[], p_n integer)
RETURNS TABLE (runner_id text, k bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT m.id, row_number() OVER (ORDER BY m.free - s.i DESC, m.rank)
    FROM unnest(p_ids, p_frees) WITH ORDINALITY AS m(id, free, rank)
    CROSS JOIN LATERAL generate_series(0, least(m.free, p_n) - 1) AS s(i)
$$;

-- The jobs a group of runners would take of shapes `p_shapes`, in claim order `k`: each shape's
-- queued jobs that are due, no more of a shape than `p_n` and its room in `p_rooms` (NULL: no room
-- of its own), by priority, then round-robin across the shapes (the n-th job of each shape before
-- the n+1-th of any; the shape served longest ago first), then age. Inlined into the statement
-- that calls it (SQL, stable), where each shape's jobs are read through jobs_queued_idx.
CREATE FUNCTION claim_order(p_shapes bigint[], p_rooms integer[], p_n integer)
RETURNS TABLE (id uuid, shape_id bigint, k bigint)
LANGUAGE sql STABLE AS $$
    SELECT h.id, h.shape_id, row_number() OVER (ORDER BY h.priority DESC, h.turn, h.served_at NULLS FIRST, h.id)
    FROM (
        SELECT q.id, q.priority, s.id AS shape_id, s.served_at,
               row_number() OVER (PARTITION BY s.id, q.priority ORDER BY q.id) AS turn
        FROM unnest(p_shapes, p_rooms) AS l(shape, room)
        JOIN job_shapes s ON s.id = l.shape
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority FROM jobs j
            WHERE j.shape_id = s.id AND j.state = 'queued' AND (j.not_before IS NULL OR j.not_before <= now())
            ORDER BY j.priority DESC, j.id
            LIMIT least(p_n, l.room)
        ) q
    ) h
$$;

CREATE OR REPLACE FUNCTION claim_step(p_pool text, p_limit integer, p_shard text, p_epoch bigint)
RETURNS TABLE (status text, in_flight integer, id uuid, pool text, runner_id text, shape_id bigint,
               attempt integer, payload jsonb, timeout_s double precision, trace_context jsonb,
               priority integer, created_at timestamptz, assigned_at timestamptz,
               due_in_s double precision, held_by_key integer, held_by_rate integer)
-- Its statements are planned once per session but for the one that finds a group's shapes (0022
-- says why), and read every table through its indexes (0021 says why).
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    cfg record;
    grp record;
    busy integer;
    budget integer := p_limit;
    claimed integer;
    total integer := 0;
    groups integer := 0;
    shapes bigint[];
    has_keys boolean;
    planned uuid[];
    ckeys text[];
    rkeys text[];
    waits record;
BEGIN
    IF p_shard IS NOT NULL
       AND (SELECT e.epoch FROM dispatch_epochs e WHERE e.shard = p_shard FOR SHARE) IS DISTINCT FROM p_epoch THEN
        status := 'fenced';  -- a newer leader's term is stored
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT p.max_concurrent, p.paused, p.mode, p.leader_runner_id, p.dispatch_shard, p.max_starts_per_s,
           p.starts_tat INTO cfg
    FROM pools p WHERE p.name = p_pool FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        status := 'unknown_pool';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_shard IS NOT NULL AND cfg.dispatch_shard <> p_shard THEN
        status := 'wrong_shard';  -- the pool is another shard's (moved, or the shard count changed)
        RETURN NEXT;
        RETURN;
    END IF;
    IF cfg.paused THEN
        status := 'paused';
        RETURN NEXT;
        RETURN;
    END IF;
    IF cfg.max_concurrent >= 0 THEN
        SELECT count(*) INTO busy FROM jobs j WHERE j.pool = p_pool AND j.state IN ('assigned', 'running');
        budget := least(budget, cfg.max_concurrent - busy);
        IF budget <= 0 THEN
            status := 'at_capacity';
            in_flight := busy;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    IF cfg.max_starts_per_s IS NOT NULL THEN
        -- One start per 1 / max_starts_per_s seconds (the pool's row is locked: exact).
        IF gcra_room(cfg.starts_tat, clock_timestamp(), 1 / cfg.max_starts_per_s, 1) = 0 THEN
            status := 'throttled';
            in_flight := busy;
            due_in_s := extract(epoch FROM cfg.starts_tat - clock_timestamp())::float8;
            RETURN NEXT;
            RETURN;
        END IF;
        budget := least(budget, 1);
    END IF;
    -- Nothing queued (most wakes after a job ended find none): no runner, lane or key to read.
    IF NOT EXISTS (SELECT 1 FROM jobs j WHERE j.pool = p_pool AND j.state = 'queued') THEN
        status := 'no_job';
        in_flight := busy;
        RETURN NEXT;
        RETURN;
    END IF;
    -- Runners with free slots, in groups that can take the same jobs; in a leader-mode pool only
    -- its elected leader. Each group's members freest first.
    FOR grp IN
        WITH held AS (
            SELECT j.runner_id, count(*) AS n FROM jobs j
            WHERE j.pool = p_pool AND j.state IN ('assigned', 'running') GROUP BY j.runner_id
        ), free AS (
            SELECT r.id, r.slots - coalesce(h.n, 0) AS free,
                   ARRAY(SELECT DISTINCT l FROM unnest(r.labels) l ORDER BY l) AS labels,
                   ARRAY(SELECT DISTINCT t FROM unnest(r.taints) t ORDER BY t) AS taints,
                   row_number() OVER (ORDER BY r.slots - coalesce(h.n, 0) DESC, r.created_at) AS rank
            FROM runners r LEFT JOIN held h ON h.runner_id = r.id
            WHERE r.pool = p_pool AND r.state = 'active' AND r.slots > coalesce(h.n, 0)
              AND (cfg.mode <> 'leader' OR r.id = cfg.leader_runner_id)
        )
        SELECT f.labels, f.taints, array_agg(f.id ORDER BY f.rank) AS ids,
               array_agg(f.free ORDER BY f.rank) AS frees, sum(f.free)::integer AS slots
        FROM free f GROUP BY f.labels, f.taints ORDER BY min(f.rank)
    LOOP
        groups := groups + 1;
        EXIT WHEN budget <= 0;
        -- 1. The group's shapes. Planned at every step with its values (EXECUTE), unlike the other
        -- statements here: the index that finds them depends on the pool's share of them, which a
        -- plan made once does not know (it read all 5,000 shapes of a pool beside 2,000 small pools).
        -- And whether any of them is a lane of a key (a concurrency key or a rate limit).
        EXECUTE 'SELECT array_agg(s.id), bool_or(s.concurrency_key <> '''' OR s.rate_limit_key <> '''')
                 FROM job_shapes s WHERE s.pool = $1 AND s.labels <@ $2 AND s.tolerations @> $3'
        INTO shapes, has_keys
        USING p_pool, grp.labels, grp.taints;
        CONTINUE WHEN shapes IS NULL;
        IF has_keys THEN
            -- 2. The plan: the jobs this group would take of those shapes, in claim order, within each
            -- lane's room and each key's.
            WITH lanes AS (
                SELECT s.id, s.served_at, s.concurrency_key AS ckey, s.rate_limit_key AS rkey,
                       CASE WHEN s.concurrency_key = '' THEN budget
                            ELSE greatest(0, concurrency_key_room(s.concurrency_key)) END AS croom,
                       CASE WHEN s.rate_limit_key = '' THEN budget ELSE coalesce(
                           (SELECT gcra_room(r.tat, clock_timestamp(), r.period_s / r.max_starts, r.burst)
                            FROM rate_limits r WHERE r.key = s.rate_limit_key), budget) END AS rroom
                FROM job_shapes s WHERE s.id = ANY(shapes)
            ), open_lanes AS (
                -- A lane held back: none of its jobs is read.
                SELECT array_agg(l.id) AS ids, array_agg(least(l.croom, l.rroom)) AS rooms
                FROM lanes l WHERE l.croom > 0 AND l.rroom > 0
            ), ranked AS (
                SELECT o.id, o.k, l.ckey, l.rkey, l.croom, l.rroom
                FROM open_lanes ol, claim_order(ol.ids, ol.rooms, least(budget, grp.slots)) o
                JOIN lanes l ON l.id = o.shape_id
            ), keyed AS (
                -- Within each key, no more than its room (a key may have lanes of several shapes).
                SELECT f.id, f.ckey, f.rkey, f.k
                FROM (SELECT r.*, row_number() OVER (PARTITION BY r.ckey ORDER BY r.k) AS cturn,
                                  row_number() OVER (PARTITION BY r.rkey ORDER BY r.k) AS rturn
                      FROM ranked r WHERE r.ckey <> '' OR r.rkey <> '') f
                WHERE (f.ckey = '' OR f.cturn <= f.croom) AND (f.rkey = '' OR f.rturn <= f.rroom)
            ), picked AS (
                SELECT r.id, r.ckey, r.rkey, r.k FROM ranked r WHERE r.ckey = '' AND r.rkey = ''
                UNION ALL
                SELECT * FROM keyed
                ORDER BY k LIMIT least(budget, grp.slots)
            )
            SELECT array_agg(p.id ORDER BY p.k), array_agg(DISTINCT p.ckey) FILTER (WHERE p.ckey <> ''),
                   array_agg(DISTINCT p.rkey) FILTER (WHERE p.rkey <> '')
            FROM picked p
            INTO planned, ckeys, rkeys;
        ELSE
            -- 2. No lane of a key: the plan is the first jobs in claim order.
            SELECT array_agg(o.id ORDER BY o.k), NULL, NULL INTO planned, ckeys, rkeys
            FROM claim_order(shapes, NULL, least(budget, grp.slots)) o WHERE o.k <= least(budget, grp.slots);
        END IF;
        CONTINUE WHEN planned IS NULL;
        IF ckeys IS NULL AND rkeys IS NULL THEN
            -- 3. No key planned: the claim of the jobs planned that are still queued.
            RETURN QUERY
            WITH c AS (SELECT clock_timestamp() AS now), assigned AS (
                UPDATE jobs j SET state = 'assigned', runner_id = sl.runner_id, assigned_at = c.now,
                                  not_before = NULL, claim_epoch = p_epoch, acked_at = NULL
                FROM unnest(planned) WITH ORDINALITY AS p(id, k)
                JOIN claim_slots(grp.ids, grp.frees, cardinality(planned)) sl ON sl.k = p.k, c
                -- Through the primary key, by the ids planned (as below).
                WHERE j.id = ANY(planned) AND j.id = p.id AND j.state = 'queued'
                RETURNING j.*
            ), served AS (
                UPDATE job_shapes s SET served_at = c.now FROM c
                WHERE s.id IN (SELECT a.shape_id FROM assigned a)
            )
            SELECT 'dispatched', NULL::integer, a.id, a.pool, a.runner_id, a.shape_id, a.attempt, a.payload, a.timeout_s,
                   a.trace_context, a.priority, a.created_at, a.assigned_at, NULL::float8, NULL::integer, NULL::integer
            FROM assigned a;
        ELSE
            -- 3. The locks of the keys planned (each taker of several goes in one order: no deadlock).
            PERFORM concurrency_keys_lock(ckeys);
            PERFORM 1 FROM rate_limits r WHERE r.key = ANY(rkeys) ORDER BY r.key FOR UPDATE;
            -- 4. The claim: of the jobs planned, those that still fit, as counted now the locks are held.
            RETURN QUERY
            WITH c AS (SELECT clock_timestamp() AS now), plan AS (
                SELECT j.id, j.priority, s.served_at, s.id AS lane, s.concurrency_key AS ckey, s.rate_limit_key AS rkey,
                       p.k, row_number() OVER (PARTITION BY s.concurrency_key ORDER BY p.k) AS cturn,
                       row_number() OVER (PARTITION BY s.rate_limit_key ORDER BY p.k) AS rturn
                FROM unnest(planned) WITH ORDINALITY AS p(id, k)
                -- Each by its key: OFFSET 0 keeps it a lookup per job (flattened into a join, it could be
                -- planned as a read of every queued job).
                CROSS JOIN LATERAL (SELECT j.id, j.priority, j.shape_id FROM jobs j
                                    WHERE j.id = p.id AND j.state = 'queued' OFFSET 0) j
                JOIN job_shapes s ON s.id = j.shape_id
            ), rooms AS (
                SELECT DISTINCT pl.ckey, concurrency_key_room(pl.ckey) AS room FROM plan pl WHERE pl.ckey <> ''
            ), rates AS (
                SELECT r.key, r.tat, r.period_s / r.max_starts AS interval_s,
                       gcra_room(r.tat, c.now, r.period_s / r.max_starts, r.burst) AS room
                FROM rate_limits r, c WHERE r.key = ANY(rkeys)
            ), picked AS (
                SELECT pl.id, pl.rkey, row_number() OVER (ORDER BY pl.k) AS k
                FROM plan pl LEFT JOIN rooms cr ON cr.ckey = pl.ckey LEFT JOIN rates rr ON rr.key = pl.rkey
                WHERE (pl.ckey = '' OR pl.cturn <= cr.room) AND (pl.rkey = '' OR rr.room IS NULL OR pl.rturn <= rr.room)
            ), assigned AS (
                UPDATE jobs j SET state = 'assigned', runner_id = sl.runner_id, assigned_at = c.now,
                                  not_before = NULL, claim_epoch = p_epoch, acked_at = NULL
                FROM picked pk JOIN claim_slots(grp.ids, grp.frees, cardinality(planned)) sl ON sl.k = pk.k, c
                -- By the ids planned, through the primary key: joined to `picked` alone, a plan made
                -- without the plan's size may read every queued job instead.
                WHERE j.id = ANY(planned) AND j.id = pk.id AND j.state = 'queued'
                RETURNING j.*
            ), served AS (
                UPDATE job_shapes s SET served_at = c.now FROM c
                WHERE s.id IN (SELECT a.shape_id FROM assigned a)
            ), spent AS (
                -- Only starts made count: this statement's, committed with it (or rolled back with it).
                UPDATE rate_limits r SET tat = greatest(coalesce(rr.tat, c.now), c.now) + make_interval(secs => rr.interval_s * n.n)
                FROM (SELECT a.rate_limit_key AS key, count(*) AS n FROM assigned a
                      WHERE a.rate_limit_key IS NOT NULL GROUP BY a.rate_limit_key) n
                JOIN rates rr ON rr.key = n.key, c
                WHERE r.key = n.key
            )
            SELECT 'dispatched', NULL::integer, a.id, a.pool, a.runner_id, a.shape_id, a.attempt, a.payload, a.timeout_s,
                   a.trace_context, a.priority, a.created_at, a.assigned_at, NULL::float8, NULL::integer, NULL::integer
            FROM assigned a;
        END IF;
        GET DIAGNOSTICS claimed = ROW_COUNT;
        budget := budget - claimed;
        total := total + claimed;
    END LOOP;
    IF cfg.max_starts_per_s IS NOT NULL AND total > 0 THEN
        UPDATE pools p SET starts_tat = greatest(coalesce(p.starts_tat, clock_timestamp()), clock_timestamp())
                                        + make_interval(secs => total / cfg.max_starts_per_s)
        WHERE p.name = p_pool;
    END IF;
    -- The step's summary: what it held back, and when the pool is due again (seen after this
    -- step's own changes: a rate limit's next start counts the starts just made).
    SELECT count(*) FILTER (WHERE w.ckey <> '' AND concurrency_key_room(w.ckey) <= 0) AS by_key,
           count(*) FILTER (WHERE w.rroom = 0) AS by_rate,
           min(w.rdue) FILTER (WHERE w.rroom = 0) AS rate_due
    INTO waits
    FROM (
        SELECT s.concurrency_key AS ckey, r.room AS rroom, r.due AS rdue FROM job_shapes s
        LEFT JOIN LATERAL (
            SELECT gcra_room(l.tat, clock_timestamp(), l.period_s / l.max_starts, l.burst) AS room,
                   l.tat - make_interval(secs => (l.burst - 1) * l.period_s / l.max_starts) AS due
            FROM rate_limits l WHERE l.key = s.rate_limit_key
        ) r ON true
        WHERE s.pool = p_pool AND (s.concurrency_key <> '' OR s.rate_limit_key <> '')
          AND EXISTS (SELECT 1 FROM jobs j WHERE j.shape_id = s.id AND j.state = 'queued'
                                                 AND (j.not_before IS NULL OR j.not_before <= now()) OFFSET 0)
    ) w;
    status := CASE WHEN total > 0 THEN 'dispatched' WHEN groups = 0 THEN 'no_runner' ELSE 'no_job' END;
    in_flight := busy + total;
    held_by_key := waits.by_key;
    held_by_rate := waits.by_rate;
    due_in_s := extract(epoch FROM least(
        (SELECT min(j.not_before) FROM jobs j WHERE j.pool = p_pool AND j.state = 'queued' AND j.not_before > now()),
        waits.rate_due,
        CASE WHEN cfg.max_starts_per_s IS NOT NULL AND total > 0
             THEN (SELECT p.starts_tat FROM pools p WHERE p.name = p_pool) END
    ) - clock_timestamp())::float8;
    RETURN NEXT;
END $$;
