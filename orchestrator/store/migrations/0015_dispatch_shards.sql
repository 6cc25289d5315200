-- Dispatch shards (issue 22): pools spread over ORCH_DISPATCH_SHARDS shards, each with its own
-- lease and its own fencing epoch, so several dispatch instances share the pools.
--
-- How many shards there are: one row, set by each dispatch instance at its start to its
-- ORCH_DISPATCH_SHARDS (`dispatch_shards_set`), which re-computes every pool's shard in the same
-- statement when the number changed. 1 until then: every pool in shard 'all', as before.
CREATE TABLE dispatch_config (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    shards          integer NOT NULL CHECK (shards >= 1)
);
INSERT INTO dispatch_config (shards) VALUES (1);

-- The shard of a pool: with one shard 'all' (the lease key and epoch row one dispatcher always
-- had), else '0'..'n-1': its explicit `shard` while that is one of them, otherwise the CRC-32 of
-- its name (UTF-8) modulo n: stable across processes, versions and languages (Python's
-- zlib.crc32 gives the same), unlike Postgres' hashtext or Python's hash().
CREATE FUNCTION pool_dispatch_shard(name text, pinned integer, shards integer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN shards <= 1 THEN 'all'
                WHEN pinned IS NOT NULL AND pinned < shards THEN pinned::text
                ELSE (crc32(convert_to(name, 'UTF8')) % shards)::text END
$$;

-- `shard`: the operator's choice (NULL: by the hash). `dispatch_shard`: where the pool is now,
-- kept by the trigger below on every insert and change of `shard`, and by `dispatch_shards_set`
-- when the number of shards changes; the claim checks it against its fence's shard.
ALTER TABLE pools ADD COLUMN shard integer CONSTRAINT pools_shard_check CHECK (shard >= 0);
ALTER TABLE pools ADD COLUMN dispatch_shard text NOT NULL DEFAULT 'all';

CREATE FUNCTION pool_place() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.dispatch_shard := pool_dispatch_shard(NEW.name, NEW.shard, (SELECT c.shards FROM dispatch_config c));
    RETURN NEW;
END $$;
CREATE TRIGGER pools_place BEFORE INSERT OR UPDATE OF name, shard ON pools
    FOR EACH ROW EXECUTE FUNCTION pool_place();

-- Epochs from one sequence for every shard: a term's epoch still only grows within its shard, and
-- it names one term of the whole deployment, so a job's claim_epoch says which term claimed it
-- even after its pool moved to another shard.
CREATE SEQUENCE dispatch_epoch_seq;
SELECT setval('dispatch_epoch_seq', coalesce(max(epoch), 1), max(epoch) IS NOT NULL) FROM dispatch_epochs;

-- The claim, as migration 0009 made it, with one more check after the pool's row is locked: under
-- a fence, the pool must be the fence's shard's (`wrong_shard` otherwise: nothing claimed). A
-- holder of the shard a pool left, or of a shard of a former shard count, claims nothing there.
CREATE OR REPLACE FUNCTION claim_step(p_pool text, p_limit integer, p_shard text, p_epoch bigint)
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
    SELECT p.max_concurrent, p.paused, p.mode, p.leader_runner_id, p.dispatch_shard INTO cfg
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
