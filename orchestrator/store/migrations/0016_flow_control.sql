-- Flow control on the job (issue 23, items 1 and 2): concurrency keys, rate limits, and a pool's
-- max_starts_per_s, all enforced by the claim, in its transaction.
--
-- A job's concurrency key and rate-limit key (NULL: none), as its spec gave them. With a key,
-- `concurrency_limit` (1 unless given) and `on_conflict` (what admission did with the key's other
-- jobs: queue | cancel_in_progress | cancel_pending | reject) are set too.
ALTER TABLE jobs ADD COLUMN concurrency_key text;
ALTER TABLE jobs ADD COLUMN concurrency_limit integer CONSTRAINT jobs_concurrency_limit_check CHECK (concurrency_limit >= 1);
ALTER TABLE jobs ADD COLUMN on_conflict text CONSTRAINT jobs_on_conflict_check
    CHECK (on_conflict IN ('queue', 'cancel_in_progress', 'cancel_pending', 'reject'));
ALTER TABLE jobs ADD COLUMN rate_limit_key text;

-- What a key holds (its jobs assigned or running, counted by the claim) and its limit (the
-- smallest concurrency_limit among its live jobs: see concurrency_key_room()).
CREATE INDEX jobs_concurrency_held_idx ON jobs (concurrency_key)
    WHERE concurrency_key IS NOT NULL AND state IN ('assigned', 'running');
CREATE INDEX jobs_concurrency_live_idx ON jobs (concurrency_key, concurrency_limit)
    WHERE concurrency_key IS NOT NULL AND state IN ('queued', 'assigned', 'running');

-- A key is part of its jobs' shape: each (shape, concurrency key, rate-limit key) is a lane of
-- its own, so the claim passes over a lane whose key is at its limit, or whose rate limit has no
-- start left, without reading its jobs: a job behind them is not held up by them, however many
-- there are (seed 004's rule, for flow control). Lanes take turns like tenants' shapes do.
ALTER TABLE job_shapes ADD COLUMN concurrency_key text NOT NULL DEFAULT '';
ALTER TABLE job_shapes ADD COLUMN rate_limit_key text NOT NULL DEFAULT '';
ALTER TABLE job_shapes DROP CONSTRAINT job_shapes_pool_labels_tenant_tolerations_key;
ALTER TABLE job_shapes ADD CONSTRAINT job_shapes_lane_key
    UNIQUE (pool, labels, tenant, tolerations, concurrency_key, rate_limit_key);
-- The claim's look at a pool's keyed lanes (held back, next start), and the pools a key's lanes
-- are in (woken when the key frees up).
CREATE INDEX job_shapes_flow_idx ON job_shapes (pool) WHERE concurrency_key <> '' OR rate_limit_key <> '';
CREATE INDEX job_shapes_concurrency_key_idx ON job_shapes (concurrency_key) WHERE concurrency_key <> '';

-- Rate limits (`PUT /v1/rate-limits/{key}`): at most `max_starts` starts per `period_s`, spread
-- evenly (GCRA: one start every period_s / max_starts), with up to `burst` at once after a quiet
-- spell. One timestamp of state: `tat`, the theoretical arrival time of the next start (NULL:
-- none yet). Updated by the claim that starts a job of the key, in its transaction.
CREATE TABLE rate_limits (
    key             text PRIMARY KEY,
    max_starts      integer NOT NULL CHECK (max_starts >= 1),
    period_s        double precision NOT NULL CHECK (period_s > 0),
    burst           integer NOT NULL DEFAULT 1 CHECK (burst >= 1 AND burst <= max_starts),
    tat             timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A pool's starts per second at most (NULL: no cap), spread evenly the same way (burst 1), and
-- its GCRA state.
ALTER TABLE pools ADD COLUMN max_starts_per_s double precision CONSTRAINT pools_max_starts_per_s_check
    CHECK (max_starts_per_s > 0);
ALTER TABLE pools ADD COLUMN starts_tat timestamptz;

-- How many starts a GCRA with theoretical arrival time `tat` allows at `at`, one per `interval_s`
-- and `burst` at once: the k-th start (from 0) conforms while max(tat, at) + k * interval_s is
-- within (burst - 1) * interval_s of `at`. The state after n starts is max(tat, at) + n * interval_s.
CREATE FUNCTION gcra_room(tat timestamptz, at timestamptz, interval_s double precision, burst integer)
RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN tat IS NULL OR tat <= at THEN burst
                ELSE greatest(0, burst - ceil(extract(epoch FROM tat - at) / interval_s)::integer) END
$$;

-- How many more jobs of concurrency key `k` may be assigned or running now: its limit (the
-- smallest concurrency_limit among its live jobs, so no job ever runs beside more of its key than
-- its own limit allows) less those assigned or running. Read with the caller's snapshot: the
-- claim takes the key's lock first, in a statement of its own (see claim_step).
CREATE FUNCTION concurrency_key_room(k text) RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT min(j.concurrency_limit) FROM jobs j
                     WHERE j.concurrency_key = k AND j.state IN ('queued', 'assigned', 'running')), 1)
           - (SELECT count(*) FROM jobs j WHERE j.concurrency_key = k AND j.state IN ('assigned', 'running'))::integer
$$;

-- Take the lock of each of `keys` (an advisory transaction lock on its hash), in the order of the
-- hashes: every taker (the claim, admission) goes in that order, so none waits for another in a
-- circle. Held to the commit.
CREATE FUNCTION concurrency_keys_lock(keys text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h integer;
BEGIN
    FOREACH h IN ARRAY ARRAY(SELECT DISTINCT hashtext(k) FROM unnest(keys) k ORDER BY 1) LOOP
        PERFORM pg_advisory_xact_lock(hashtext('orch.concurrency_key'), h);
    END LOOP;
END $$;

-- The claim (migration 0009, with 0015's shard check), with flow control. The step's last row
-- now sums it up: the step's status (dispatched | no_job | no_runner, or why it claimed nothing:
-- fenced | unknown_pool | wrong_shard | paused | at_capacity | throttled), `in_flight` after
-- it, `due_in_s` (when the pool should be stepped again although nothing will announce it: its
-- first job out of a retry backoff, a rate limit's next start, the pool's next start under
-- max_starts_per_s; NULL: no such time), and the lanes it passed over because of a concurrency
-- key at its limit (`held_by_key`) or a rate limit without a start left (`held_by_rate`). The rows
-- before it are the jobs claimed, status 'dispatched'.
--
-- Per group of runners it plans, locks, then claims, three statements. The plan picks the jobs as
-- before (priority, lanes round-robin, age), passing over lanes whose key has no room or whose
-- rate limit has no start left, and within each key no more than its room, all as this
-- statement's snapshot says. Then it takes the lock of each concurrency key it picked
-- (concurrency_keys_lock: admissions of the key take it too) and the row of each rate limit (FOR
-- UPDATE, in key order). Then the claim keeps, of the jobs planned,
-- those that still fit, by counts read in a new statement, so with a new snapshot taken once the
-- locks are held.
--
-- Why the count cannot be exceeded (Hatchet counted runs still invisible to it, and admitted 3-4
-- against max_runs=2): a count is only ever taken by a statement that starts after its key's lock
-- is granted, and the lock is held to the commit of the claim that took it. So any earlier claim
-- of the key has committed, and its rows are in the count; any later one waits for this commit
-- before it counts. Jobs claimed together (one statement, or two groups of one step) are counted
-- against each other: in one statement by their rank within the key, across statements because
-- the later one sees the earlier's rows. Only a claim adds to a key's count, so nothing else can
-- slip in between. Rate limits are serialized by their row's lock the same way.
DROP FUNCTION claim_step(text, integer, text, bigint);
CREATE FUNCTION claim_step(p_pool text, p_limit integer, p_shard text, p_epoch bigint)
RETURNS TABLE (status text, in_flight integer, id uuid, pool text, runner_id text, shape_id bigint,
               attempt integer, payload jsonb, timeout_s double precision, trace_context jsonb,
               priority integer, created_at timestamptz, assigned_at timestamptz,
               due_in_s double precision, held_by_key integer, held_by_rate integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cfg record;
    grp record;
    busy integer;
    budget integer := p_limit;
    claimed integer;
    total integer := 0;
    groups integer := 0;
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
        -- 1. The plan: the jobs this group would take, in claim order.
        WITH lanes AS (
            SELECT s.id, s.served_at, s.concurrency_key AS ckey, s.rate_limit_key AS rkey,
                   CASE WHEN s.concurrency_key = '' THEN budget
                        ELSE greatest(0, concurrency_key_room(s.concurrency_key)) END AS croom,
                   CASE WHEN s.rate_limit_key = '' THEN budget ELSE coalesce(
                       (SELECT gcra_room(r.tat, clock_timestamp(), r.period_s / r.max_starts, r.burst)
                        FROM rate_limits r WHERE r.key = s.rate_limit_key), budget) END AS rroom
            FROM job_shapes s
            WHERE s.pool = p_pool AND s.labels <@ grp.labels AND s.tolerations @> grp.taints
        ), heads AS (
            SELECT q.id, q.priority, s.served_at, s.ckey, s.rkey, s.croom, s.rroom,
                   row_number() OVER (PARTITION BY s.id, q.priority ORDER BY q.id) AS turn
            FROM lanes s
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority FROM jobs j
                WHERE j.shape_id = s.id AND j.state = 'queued'
                  AND (j.not_before IS NULL OR j.not_before <= now())
                ORDER BY j.priority DESC, j.id
                LIMIT least(budget, grp.slots, s.croom, s.rroom)
            ) q
            WHERE s.croom > 0 AND s.rroom > 0  -- a lane held back: none of its jobs is read
        ), ranked AS (
            SELECT h.*, row_number() OVER (ORDER BY h.priority DESC, h.turn, h.served_at NULLS FIRST, h.id) AS k
            FROM heads h
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
        INTO planned, ckeys, rkeys
        FROM picked p;
        CONTINUE WHEN planned IS NULL;
        -- 2. The locks of the keys planned (each taker of several goes in one order: no deadlock).
        PERFORM concurrency_keys_lock(ckeys);
        PERFORM 1 FROM rate_limits r WHERE r.key = ANY(rkeys) ORDER BY r.key FOR UPDATE;
        -- 3. The claim: of the jobs planned, those that still fit, as counted now the locks are held.
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
        ), slots AS (
            -- The k-th job to the runner with the most slots left after the first k-1.
            SELECT m.id AS runner_id, row_number() OVER (ORDER BY m.free - s.i DESC, m.rank) AS k
            FROM unnest(grp.ids, grp.frees) WITH ORDINALITY AS m(id, free, rank)
            CROSS JOIN LATERAL generate_series(0, m.free - 1) AS s(i)
        ), assigned AS (
            UPDATE jobs j SET state = 'assigned', runner_id = sl.runner_id, assigned_at = c.now,
                              not_before = NULL, claim_epoch = p_epoch, acked_at = NULL
            FROM picked pk JOIN slots sl ON sl.k = pk.k, c
            WHERE j.id = pk.id AND j.state = 'queued'
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
                                                 AND (j.not_before IS NULL OR j.not_before <= now()))
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
