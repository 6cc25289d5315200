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
    dispatch_shard  text NOT NULL DEFAULT 'all',      -- its shard now (pool_place(), dispatch_shards_set)
    -- Starts per second at most (NULL: no cap), spread evenly, and their GCRA state (migration 0016).
    max_starts_per_s double precision CONSTRAINT pools_max_starts_per_s_check CHECK (max_starts_per_s > 0),
    starts_tat      timestamptz
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

-- A shape is what a queued job needs: its pool, labels, tenant and tolerations, and the flow
-- controls it is under (its concurrency key and rate-limit key: a lane, migration 0016). Runners
-- match shapes, not jobs, so finding a runnable job never scans jobs no free runner can take
-- (seed 004), nor those a key holds back, and `served_at` gives round-robin across shapes (so
-- across tenants and keys) within a priority. A shape no queued, assigned or running job uses is
-- deleted by the pruner (migration 0012).
CREATE TABLE job_shapes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool            text NOT NULL REFERENCES pools (name),
    labels          text[] NOT NULL,                  -- sorted, distinct
    tenant          text NOT NULL DEFAULT '',
    served_at       timestamptz,
    tolerations     text[] NOT NULL DEFAULT '{}',     -- sorted, distinct
    concurrency_key text NOT NULL DEFAULT '',         -- '' : none
    rate_limit_key  text NOT NULL DEFAULT '',         -- '' : none
    CONSTRAINT job_shapes_lane_key UNIQUE (pool, labels, tenant, tolerations, concurrency_key, rate_limit_key)
);

-- A claim looks up the shapes whose labels its runners have (migration 0010).
CREATE INDEX job_shapes_labels_idx ON job_shapes USING gin (labels) WITH (fastupdate = off);
-- The claim's look at a pool's keyed lanes (held back, next start), and the pools a key's lanes
-- are in (woken when the key frees up).
CREATE INDEX job_shapes_flow_idx ON job_shapes (pool) WHERE concurrency_key <> '' OR rate_limit_key <> '';
CREATE INDEX job_shapes_concurrency_key_idx ON job_shapes (concurrency_key) WHERE concurrency_key <> '';

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
    attempts        jsonb NOT NULL DEFAULT '[]',
    run_at          timestamptz,                      -- a delayed job: first due then (not_before until claimed)
    -- Flow control (migration 0016): its concurrency key (NULL: none) with the limit and what
    -- admission did with the key's other jobs, and its rate-limit key (NULL: none).
    concurrency_key text,
    concurrency_limit integer CONSTRAINT jobs_concurrency_limit_check CHECK (concurrency_limit >= 1),
    on_conflict     text CONSTRAINT jobs_on_conflict_check
                    CHECK (on_conflict IN ('queue', 'cancel_in_progress', 'cancel_pending', 'reject')),
    rate_limit_key  text
);

CREATE TABLE dispatch_epochs (
    shard           text PRIMARY KEY,                 -- a dispatch shard ('all': the only one; else '0'..'n-1')
    epoch           bigint NOT NULL,                  -- the newest leader's term (dispatch_epoch_seq)
    holder          text,                             -- that leader's instance id
    since           timestamptz NOT NULL DEFAULT now()
);
-- Epochs of every shard's terms: one sequence, so an epoch names one term of the deployment.
CREATE SEQUENCE dispatch_epoch_seq;

-- How many dispatch shards pools are spread over (one row; migration 0015 says who sets it).
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
-- Queued jobs not due yet (delayed, or waiting out a retry backoff): when the first is due (the
-- claim says, for dispatch's timer).
CREATE INDEX jobs_deferred_idx ON jobs (pool, not_before) WHERE state = 'queued' AND not_before IS NOT NULL;
-- What a concurrency key holds (assigned or running), and its limit (the least of its live jobs').
CREATE INDEX jobs_concurrency_held_idx ON jobs (concurrency_key)
    WHERE concurrency_key IS NOT NULL AND state IN ('assigned', 'running');
CREATE INDEX jobs_concurrency_live_idx ON jobs (concurrency_key, concurrency_limit)
    WHERE concurrency_key IS NOT NULL AND state IN ('queued', 'assigned', 'running');

-- Rate limits (`PUT /v1/rate-limits/{key}`): at most `max_starts` starts per `period_s`, spread
-- evenly (GCRA: one start every period_s / max_starts), up to `burst` at once after a quiet spell;
-- `tat` is the theoretical arrival time of the next start, set by the claims (migration 0016).
CREATE TABLE rate_limits (
    key             text PRIMARY KEY,
    max_starts      integer NOT NULL CHECK (max_starts >= 1),
    period_s        double precision NOT NULL CHECK (period_s > 0),
    burst           integer NOT NULL DEFAULT 1 CHECK (burst >= 1 AND burst <= max_starts),
    tat             timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

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
    reason          text NOT NULL,                    -- malformed | invalid | unsatisfiable | overloaded | conflict | concurrency_limit
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

-- A claim's runners for `p_n` jobs: the k-th to the runner with the most slots left after the first
-- k-1 (ties to the runner ranked first), none giving more than `p_n` (migration 0023).
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

-- A dispatch step's claim (edge queued -> assigned) in one call (issue 19): the fencing check, the
-- pool's lock, its budget, the match and the assignment to runners together. One row version per
-- claimed job (the runner is set by the claim itself). Rows: one per claimed job, status
-- 'dispatched', then one that sums the step up: its status (dispatched | no_job, nothing queued or
-- nothing the free runners take | no_runner, jobs wait and no runner has a slot; or why it
-- claimed nothing: fenced | unknown_pool | wrong_shard | paused | at_capacity |
-- throttled), `in_flight` after it (NULL for an unlimited pool), `due_in_s` (when the pool should
-- be stepped again although nothing will announce it: its first job out of a retry backoff, a
-- rate limit's next start, the pool's next start under max_starts_per_s; NULL: none), and the
-- lanes it passed over because of a concurrency key at its limit (`held_by_key`) or a rate limit
-- without a start left (`held_by_rate`). Under a fence (shard, epoch): the epoch must be the
-- shard's newest, and the pool that shard's (migration 0015).
--
-- Matching goes by shape (seed 004): runners with the same labels and taints are one group, which
-- takes only jobs of the shapes it can run, so the cost does not grow with jobs queued for other
-- shapes, nor with those a key or a rate limit holds back (a lane held back is passed over
-- without reading its jobs). Order: priority, then round-robin across shapes (the n-th job of each
-- shape before the n+1-th of any; the shape served longest ago first), then age. Jobs go to the
-- freest runners first, one slot at a time. The pool's row lock keeps other claimers of the pool
-- out; the `state = 'queued'` re-check skips a row cancelled meanwhile.
--
-- Flow control (migration 0016 says why it is exact): per group of runners, a plan (the jobs it
-- would take, within each key's room as the plan's snapshot says), the locks of the keys planned
-- (concurrency_keys_lock; each rate limit's row FOR UPDATE), then the claim of the jobs planned
-- that still fit, counted by a statement that starts once the locks are held. A plan without a
-- key is claimed by one plain update (migration 0023).
CREATE FUNCTION claim_step(p_pool text, p_limit integer, p_shard text, p_epoch bigint)
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

-- Provisioned workers, counted against the fleet cap by every provisioner instance.
CREATE TABLE workers (
    id          text PRIMARY KEY,                   -- the runner id it registers under
    pool        text NOT NULL REFERENCES pools (name),
    spawned_by  text NOT NULL,                      -- the provisioner's instance id
    spawned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_pool_idx ON workers (pool);

-- A pool's dispatch shard (migration 0015 says how it is chosen), kept on its row by the trigger.
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

-- Schedules: a job spec on a cron (migration 0014 says how a fire time is handled once).
CREATE TABLE schedules (
    name            text PRIMARY KEY,
    cron            text NOT NULL,
    timezone        text NOT NULL,
    job             jsonb NOT NULL,                   -- the job spec each fire submits (as given)
    pool            text NOT NULL,                    -- the job spec's pool (no foreign key: see below)
    overlap         text NOT NULL CHECK (overlap IN ('skip', 'allow', 'cancel_previous')),
    catch_up        text NOT NULL CHECK (catch_up IN ('none', 'latest', 'all')),
    paused          boolean NOT NULL DEFAULT false,
    version         bigint NOT NULL DEFAULT 1,        -- every PUT adds one: a fire planned on another fails
    handled_through timestamptz NOT NULL,
    next_fire_at    timestamptz,                      -- NULL: it never fires again
    last_fire_at    timestamptz,                      -- the scheduled time of the last fire
    last_job_id     uuid,                             -- the job it submitted (it may be gone since)
    last_skip_at    timestamptz,
    last_skip_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- The scheduler's timer: the earliest fire time of the schedules not paused.
CREATE INDEX schedules_next_fire_idx ON schedules (next_fire_at) WHERE NOT paused;

-- The jobs a schedule fired that may still be live, for `overlap` (skip while one is, or cancel
-- them): a fire adds its job and forgets those that have ended (or are gone). No foreign keys:
-- a pool may be deleted under a schedule (its fires are then refused, and say so), and jobs are
-- pruned without asking.
CREATE TABLE schedule_jobs (
    schedule        text NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    fire_at         timestamptz NOT NULL,
    job_id          uuid NOT NULL,
    PRIMARY KEY (schedule, fire_at)
);
