-- A dispatch step's claim (edge queued -> assigned) as one statement (issue 19): the fencing check,
-- the pool's lock, its budget, the match and the assignment to runners together, where it took a
-- transaction of about nine round trips. One row version per claimed job (the runner is set by
-- the claim itself). Rows: one per claimed job, status 'dispatched'; or one row with the status
-- of a step that claimed nothing (fenced | unknown_pool | paused | at_capacity | no_runner |
-- no_job). `in_flight` is the pool's count before the step (NULL for an unlimited pool).
--
-- Matching goes by shape (seed 004): runners with the same labels and taints are one group, which
-- takes only jobs of the shapes it can run, so the cost does not grow with jobs queued for other
-- shapes. Order: priority, then round-robin across shapes (the n-th job of each shape before the
-- n+1-th of any; the shape served longest ago first), then age. Jobs go to the freest runners
-- first, one slot at a time. The pool's row lock keeps other claimers of the pool out; the
-- `state = 'queued'` re-check skips a row cancelled meanwhile.
CREATE FUNCTION claim_step(p_pool text, p_limit integer, p_shard text, p_epoch bigint)
RETURNS TABLE (status text, in_flight integer, id uuid, pool text, runner_id text, shape_id bigint,
               attempt integer, payload jsonb, timeout_s double precision, trace_context jsonb,
               priority integer, created_at timestamptz, assigned_at timestamptz)
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
BEGIN
    IF p_shard IS NOT NULL
       AND (SELECT e.epoch FROM dispatch_epochs e WHERE e.shard = p_shard FOR SHARE) IS DISTINCT FROM p_epoch THEN
        status := 'fenced';  -- a newer leader's term is stored
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT p.max_concurrent, p.paused, p.mode, p.leader_runner_id INTO cfg
    FROM pools p WHERE p.name = p_pool FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        status := 'unknown_pool';
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
        RETURN QUERY
        WITH shapes AS (
            SELECT s.id, s.served_at FROM job_shapes s
            WHERE s.pool = p_pool AND s.labels <@ grp.labels AND s.tolerations @> grp.taints
        ), heads AS (
            SELECT q.id, q.priority, s.served_at,
                   row_number() OVER (PARTITION BY s.id, q.priority ORDER BY q.id) AS turn
            FROM shapes s
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority FROM jobs j
                WHERE j.shape_id = s.id AND j.state = 'queued'
                  AND (j.not_before IS NULL OR j.not_before <= now())
                ORDER BY j.priority DESC, j.id
                LIMIT least(budget, grp.slots)
            ) q
        ), picked AS (
            SELECT h.id, row_number() OVER (ORDER BY h.priority DESC, h.turn, h.served_at NULLS FIRST, h.id) AS k
            FROM heads h ORDER BY h.priority DESC, h.turn, h.served_at NULLS FIRST, h.id
            LIMIT least(budget, grp.slots)
        ), slots AS (
            -- The k-th job to the runner with the most slots left after the first k-1.
            SELECT m.id AS runner_id, row_number() OVER (ORDER BY m.free - s.i DESC, m.rank) AS k
            FROM unnest(grp.ids, grp.frees) WITH ORDINALITY AS m(id, free, rank)
            CROSS JOIN LATERAL generate_series(0, m.free - 1) AS s(i)
        ), assigned AS (
            UPDATE jobs j SET state = 'assigned', runner_id = sl.runner_id, assigned_at = clock_timestamp(),
                              not_before = NULL, claim_epoch = p_epoch, acked_at = NULL
            FROM picked pk JOIN slots sl ON sl.k = pk.k
            WHERE j.id = pk.id AND j.state = 'queued'
            RETURNING j.*
        ), served AS (
            UPDATE job_shapes s SET served_at = clock_timestamp()
            WHERE s.id IN (SELECT a.shape_id FROM assigned a)
        )
        SELECT 'dispatched', busy, a.id, a.pool, a.runner_id, a.shape_id, a.attempt, a.payload, a.timeout_s,
               a.trace_context, a.priority, a.created_at, a.assigned_at
        FROM assigned a;
        GET DIAGNOSTICS claimed = ROW_COUNT;
        budget := budget - claimed;
        total := total + claimed;
    END LOOP;
    IF total = 0 THEN
        status := CASE WHEN groups = 0 THEN 'no_runner' ELSE 'no_job' END;
        in_flight := busy;
        RETURN NEXT;
    END IF;
END $$;
