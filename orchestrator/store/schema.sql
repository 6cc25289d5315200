-- The whole current schema in one file: what every migration from zero adds up to.
-- tests/integration/test_migrations.py checks that the two agree; change both together.

CREATE TABLE pools (
    name            text PRIMARY KEY,
    max_concurrent  integer NOT NULL DEFAULT 20,      -- negative = unlimited
    max_active      integer NOT NULL DEFAULT 1024,    -- negative = unlimited
    labels          text[] NOT NULL DEFAULT '{}',
    allowed_plans   text[] NOT NULL DEFAULT '{}',     -- empty = any plan
    mode            text NOT NULL DEFAULT 'shared' CHECK (mode IN ('shared', 'leader')),
    paused          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    leader_runner_id text,                            -- leader mode: the elected runner (NULL: none)
    provisioner     text,                             -- starts a one-shot worker per job (NULL: none)
    max_workers     integer NOT NULL DEFAULT 0        -- live provisioned workers at most; 0 = no cap
                    CONSTRAINT pools_max_workers_check CHECK (max_workers >= 0),
    reservation_timeout_s double precision NOT NULL DEFAULT 3600 -- timeout_s of a reservation given none
                    CONSTRAINT pools_reservation_timeout_check CHECK (reservation_timeout_s > 0),
    file_config     jsonb,                            -- what the pools file last said (NULL: not in it)
    -- Bumped by every deletion of the pool's shapes (migration 0012): remembered ids may be gone.
    shape_generation bigint NOT NULL DEFAULT 0,
    shard           integer                           -- the dispatch shard an operator chose (NULL: by hash)
                    CONSTRAINT pools_shard_check CHECK (shard >= 0),
    dispatch_shard  text NOT NULL DEFAULT 'all'       -- its shard now (pool_place(), dispatch_shards_set)
);

CREATE TABLE runners (
    id              text PRIMARY KEY,
    pool            text NOT NULL REFERENCES pools (name),
    labels          text[] NOT NULL DEFAULT '{}',
    slots           integer NOT NULL CHECK (slots >= 0),
    taints          text[] NOT NULL DEFAULT '{}',
    -- suspect: missed an assignment ack; takes no jobs until its next heartbeat.
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'suspect', 'lost')),
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_seq   bigint NOT NULL DEFAULT 0         -- the newest heartbeat reconciled
);

ALTER TABLE pools ADD FOREIGN KEY (leader_runner_id) REFERENCES runners (id);

-- A claim reads the pool's active runners (migration 0012).
CREATE INDEX runners_pool_state_idx ON runners (pool, state);

-- A shape is what a queued job needs: its pool, labels, tenant and tolerations. Runners match
-- shapes, not jobs, so finding a runnable job never scans jobs no free runner can take (seed 004), and
-- `served_at` gives round-robin across shapes (so across tenants) within a priority. A shape no
-- queued, assigned or running job uses is deleted by the pruner (migration 0012).
CREATE TABLE job_shapes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool            text NOT NULL REFERENCES pools (name),
    labels          text[] NOT NULL,                  -- sorted, distinct
    tenant          text NOT NULL DEFAULT '',
    served_at       timestamptz,
    tolerations     text[] NOT NULL DEFAULT '{}',     -- sorted, distinct
    UNIQUE (pool, labels, tenant, tolerations)
);

-- A claim looks up the shapes whose labels its runners have (migration 0010).
CREATE INDEX job_shapes_labels_idx ON job_shapes USING gin (labels) WITH (fastupdate = off);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,                 -- UUIDv7: time-ordered, FIFO is id order
    key             text NOT NULL UNIQUE,             -- idempotency key (the id when none given)
    spec            jsonb NOT NULL,                   -- canonical spec, compared on a repeated key
    pool            text NOT NULL REFERENCES pools (name),
    -- No foreign key (migration 0012): a live job's shape exists, a finished job's may be pruned.
    shape_id        bigint NOT NULL,
    labels          text[] NOT NULL DEFAULT '{}',
    plan            text,
    tenant          text,
    priority        integer NOT NULL DEFAULT 0,
    payload         jsonb NOT NULL DEFAULT '{}',
    timeout_s       double precision,
    max_attempts    integer NOT NULL DEFAULT 3,
    abandon_after_s double precision,
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN (
                        'queued', 'assigned', 'running',
                        'succeeded', 'failed', 'timed_out', 'cancelled', 'expired')),
    attempt         integer NOT NULL DEFAULT 0,       -- attempts started
    not_before      timestamptz,                      -- retry backoff: not claimed before this
    runner_id       text,
    exit_code       integer,
    reason          text,
    token_hash      bytea,
    trace_context   jsonb NOT NULL DEFAULT '{}',      -- the producer's W3C context
    created_at      timestamptz NOT NULL DEFAULT now(),
    assigned_at     timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    claim_epoch     bigint,                           -- the leader term that claimed it (NULL: no lease)
    tolerations     text[] NOT NULL DEFAULT '{}',     -- taints it tolerates (a tainted runner takes it)
    last_polled_at  timestamptz,                      -- take clients: last heard from (a long poll counts until it ends)
    taken_at        timestamptz,                      -- the take client took the runner (latest take): no abandonment since
    acked_at        timestamptz,                      -- the runner acknowledged this assignment
    cancel_requested_at timestamptz,                  -- a cancel its runner has not confirmed yet
    unheld_seq      bigint,                           -- the runner's heartbeat that first lacked it
    retry           jsonb,                            -- its retry policy (NULL: the default; see job_retry_delay())
    -- Every attempt that ended, oldest first (migration 0011 says why an array, not a table).
    attempts        jsonb NOT NULL DEFAULT '[]'
);

CREATE TABLE dispatch_epochs (
    shard           text PRIMARY KEY,                 -- a dispatch shard ('all': the only one; else '0'..'n-1')
    epoch           bigint NOT NULL,                  -- the newest leader's term (dispatch_epoch_seq)
    holder          text,                             -- that leader's instance id
    since           timestamptz NOT NULL DEFAULT now()
);
-- Epochs of every shard's terms: one sequence, so an epoch names one term of the deployment.
CREATE SEQUENCE dispatch_epoch_seq;

-- How many dispatch shards pools are spread over (one row; migration 0013 says who sets it).
CREATE TABLE dispatch_config (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    shards          integer NOT NULL CHECK (shards >= 1)
);
INSERT INTO dispatch_config (shards) VALUES (1);

-- The claim order within a shape: best priority, then oldest.
CREATE INDEX jobs_queued_idx ON jobs (shape_id, priority DESC, id) WHERE state = 'queued';
-- Active (max_active) and in-flight (max_concurrent) counts per pool, read by admission and claims.
CREATE INDEX jobs_active_idx ON jobs (pool, state) WHERE state IN ('queued', 'assigned', 'running');
CREATE INDEX jobs_runner_idx ON jobs (runner_id) WHERE state IN ('assigned', 'running');
-- The server's timeout sweep.
CREATE INDEX jobs_running_timeout_idx ON jobs (started_at) WHERE state = 'running' AND timeout_s IS NOT NULL;
-- Queued jobs waiting out a retry backoff: when the first is due (the claim says, for dispatch's timer).
CREATE INDEX jobs_deferred_idx ON jobs (pool, not_before) WHERE state = 'queued' AND not_before IS NOT NULL;

-- A churning queue fills its partial indexes with dead entries; vacuum it early and often.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0
);

-- A JetStream message is acked (or terminated) even when refused, and its producer had no one to
-- answer it: this table is what it can look at afterwards (`GET /v1/rejections`). HTTP and
-- request/reply callers get the answer itself, so their refusals are not written (a 429 storm
-- must not turn into a write storm).
CREATE TABLE rejections (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    reason          text NOT NULL,                    -- malformed | invalid | unsatisfiable | overloaded | conflict
    message         text NOT NULL,
    field           text,
    pool            text,
    key             text,
    stream_seq      bigint,                           -- the message's sequence in the intake stream
    body            text                              -- the start of what was sent, for malformed input
);
-- The pruner deletes rejections by age (migration 0012).
CREATE INDEX rejections_at_idx ON rejections (at);

-- Jobs finished in a pool lately: how fast it drains, so a shed producer is told when to retry.
CREATE INDEX jobs_finished_idx ON jobs (pool, finished_at) WHERE finished_at IS NOT NULL;

-- Take-style jobs the abandonment sweep visits: live, not taken yet (seed 003).
CREATE INDEX jobs_abandonable_idx ON jobs (pool)
    WHERE abandon_after_s IS NOT NULL AND taken_at IS NULL AND state IN ('queued', 'assigned', 'running');
-- Servo's wire format names a job by its client's unique_id, kept in the payload (payload.servo).
CREATE INDEX jobs_servo_unique_id_idx ON jobs ((payload #>> '{servo,unique_id}')) WHERE payload ? 'servo';

-- The transactional outbox: each job transition's news, written in the transition's own
-- transaction, published by the relay in `seq` order and deleted once NATS acknowledged it.
CREATE TABLE outbox (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              uuid NOT NULL,                    -- the event's own id: its Nats-Msg-Id
    subject         text NOT NULL,                    -- relative to the namespace: jobs.finished.<pool>
    body            bytea NOT NULL,                   -- the event, JSON
    durable         boolean NOT NULL DEFAULT true,    -- true: the job-events stream; false: core NATS
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Wake the relay when a statement inserted news (an edge that changed nothing inserts none).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM added) THEN
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The news of a job transition, composed by the statement that makes it (queries/transitions.sql).
-- One outbox row, or none: a cancel notice needs a runner to tell. `kind` is the verb of the
-- subject; `id` and `at` the event's (the caller makes them per row: a function that made them
-- itself would be volatile, and a volatile function here is not inlined, which cost 3x). `runner`
-- and `why` are what the row no longer says (the runner a requeued job left, or the one told to
-- let go; why it was requeued). Bodies are the models of schemas/events.py, field for field
-- (tests/integration/test_job_news.py holds every kind to its model); subjects are relative to the
-- namespace, as orchestrator/bus/subjects.py names them. An unknown kind has no body, which the
-- outbox refuses (NOT NULL): an error, never a silent drop.
CREATE FUNCTION job_news(kind text, j jobs, id uuid, at timestamptz, runner text DEFAULT NULL, why text DEFAULT NULL)
RETURNS TABLE (id uuid, subject text, body bytea, durable boolean) LANGUAGE sql STABLE AS $$
    SELECT id,
           CASE kind WHEN 'cancel' THEN 'runners.' || runner || '.cancel' ELSE 'jobs.' || kind || '.' || j.pool END,
           convert_to(CASE kind
               WHEN 'admitted' THEN json_build_object(
                   'type', 'JobAdmitted', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'key', j.key, 'priority', j.priority)
               WHEN 'assigned' THEN json_build_object(
                   'type', 'JobAssigned', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'runner_id', j.runner_id,
                   -- the assignment's attempt: the next one while assigned, the current one once started
                   'attempt', CASE j.state WHEN 'assigned' THEN j.attempt + 1 ELSE j.attempt END,
                   'payload', coalesce(j.payload, '{}'), 'timeout_s', j.timeout_s,
                   'trace_context', coalesce(j.trace_context, '{}'))
               WHEN 'started' THEN json_build_object(
                   'type', 'JobStarted', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'runner_id', j.runner_id, 'attempt', j.attempt)
               WHEN 'finished' THEN json_build_object(
                   'type', 'JobFinished', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'runner_id', j.runner_id, 'attempt', j.attempt, 'state', j.state, 'exit_code', j.exit_code,
                   'reason', j.reason)
               WHEN 'requeued' THEN json_build_object(
                   'type', 'JobRequeued', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'runner_id', runner, 'attempt', j.attempt, 'reason', why)
               WHEN 'expired' THEN json_build_object(
                   'type', 'JobExpired', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'runner_id', j.runner_id, 'reason', coalesce(j.reason, 'abandoned'))
               WHEN 'cancel' THEN json_build_object(
                   'type', 'JobCancelRequested', 'v', 1, 'id', id, 'at', at, 'job_id', j.id, 'pool', j.pool,
                   'runner_id', runner)
               END::text, 'UTF8'),
           kind <> 'cancel'  -- a cancel notice is core NATS, best effort (heartbeats repeat it)
    WHERE kind <> 'cancel' OR runner IS NOT NULL
$$;

-- The delay in seconds before the next attempt of a job whose attempt number `attempt` ended with
-- `outcome` (lost | failed | timed_out), under its retry `policy` (NULL: the default, as
-- schemas/jobs.py RetryPolicy() has it); NULL when it is not retried: the policy does not retry
-- that outcome, or no attempt is left. backoff_s doubles per attempt up to max_backoff_s, less a
-- random share of up to `jitter` of it. Volatile (random()): callers evaluate it once per job.
CREATE FUNCTION job_retry_delay(policy jsonb, outcome text, attempt integer, max_attempts integer)
RETURNS double precision LANGUAGE sql VOLATILE AS $$
    SELECT least((p->>'max_backoff_s')::float8, (p->>'backoff_s')::float8 * power(2::float8, attempt - 1))
           * (1 - (p->>'jitter')::float8 * random())
    FROM (SELECT coalesce(policy, '{"on": ["lost"], "backoff_s": 1, "max_backoff_s": 60, "jitter": 0}') AS p) d
    WHERE attempt < max_attempts AND p->'on' ? outcome
$$;

-- A job's attempt history with its running attempt (if it is running) ended at `at` as `outcome`.
CREATE FUNCTION job_attempt_ended(j jobs, outcome text, exit_code integer, reason text, at timestamptz)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN j.state = 'running'
                THEN j.attempts || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempt, 'runner_id', j.runner_id, 'started_at', j.started_at, 'ended_at', at,
                    'outcome', outcome, 'exit_code', exit_code, 'reason', reason))
                ELSE j.attempts END
$$;

-- A dispatch step's claim (edge queued -> assigned) as one statement (issue 19): the fencing check,
-- the pool's lock, its budget, the match and the assignment to runners together, where it took a
-- transaction of about nine round trips. One row version per claimed job (the runner is set by
-- the claim itself). Rows: one per claimed job, status 'dispatched'; or one row with the status
-- of a step that claimed nothing (fenced | unknown_pool | wrong_shard | paused | at_capacity |
-- no_runner | no_job). `in_flight` is the pool's count before the step (NULL for an unlimited
-- pool). Under a fence (shard, epoch): the epoch must be the shard's newest, and the pool that
-- shard's (migration 0013).
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

-- Provisioned workers, counted against the fleet cap by every provisioner instance.
CREATE TABLE workers (
    id          text PRIMARY KEY,                   -- the runner id it registers under
    pool        text NOT NULL REFERENCES pools (name),
    spawned_by  text NOT NULL,                      -- the provisioner's instance id
    spawned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_pool_idx ON workers (pool);

-- A pool's dispatch shard (migration 0013 says how it is chosen), kept on its row by the trigger.
CREATE FUNCTION pool_dispatch_shard(name text, pinned integer, shards integer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN shards <= 1 THEN 'all'
                WHEN pinned IS NOT NULL AND pinned < shards THEN pinned::text
                ELSE (crc32(convert_to(name, 'UTF8')) % shards)::text END
$$;

CREATE FUNCTION pool_place() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.dispatch_shard := pool_dispatch_shard(NEW.name, NEW.shard, (SELECT c.shards FROM dispatch_config c));
    RETURN NEW;
END $$;
CREATE TRIGGER pools_place BEFORE INSERT OR UPDATE OF name, shard ON pools
    FOR EACH ROW EXECUTE FUNCTION pool_place();
