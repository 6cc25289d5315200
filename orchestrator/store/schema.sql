-- The whole current schema in one file: what every migration from zero adds up to.
-- tests/test_migrations.py checks that the two agree; change both together.

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
    file_config     jsonb                             -- what the pools file last said (NULL: not in it)
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

-- A shape is what a queued job needs: its pool, labels, tenant and tolerations. Runners match
-- shapes, not jobs, so finding a runnable job never scans jobs no free runner can take (seed 004), and
-- `served_at` gives round-robin across shapes (so across tenants) within a priority.
CREATE TABLE job_shapes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool            text NOT NULL REFERENCES pools (name),
    labels          text[] NOT NULL,                  -- sorted, distinct
    tenant          text NOT NULL DEFAULT '',
    served_at       timestamptz,
    tolerations     text[] NOT NULL DEFAULT '{}',     -- sorted, distinct
    UNIQUE (pool, labels, tenant, tolerations)
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,                 -- UUIDv7: time-ordered, FIFO is id order
    key             text NOT NULL UNIQUE,             -- idempotency key (the id when none given)
    spec            jsonb NOT NULL,                   -- canonical spec, compared on a repeated key
    pool            text NOT NULL REFERENCES pools (name),
    shape_id        bigint NOT NULL REFERENCES job_shapes (id),
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
    unheld_seq      bigint                            -- the runner's heartbeat that first lacked it
);

CREATE TABLE dispatch_epochs (
    shard           text PRIMARY KEY,                 -- a dispatch shard ('all': every pool)
    epoch           bigint NOT NULL,                  -- the newest leader's term (issued here)
    holder          text,                             -- that leader's instance id
    since           timestamptz NOT NULL DEFAULT now()
);

-- The claim order within a shape: best priority, then oldest.
CREATE INDEX jobs_queued_idx ON jobs (shape_id, priority DESC, id) WHERE state = 'queued';
-- Active (max_active) and in-flight (max_concurrent) counts per pool, read by admission and claims.
CREATE INDEX jobs_active_idx ON jobs (pool, state) WHERE state IN ('queued', 'assigned', 'running');
CREATE INDEX jobs_runner_idx ON jobs (runner_id) WHERE state IN ('assigned', 'running');
-- The server's timeout sweep.
CREATE INDEX jobs_running_timeout_idx ON jobs (started_at) WHERE state = 'running' AND timeout_s IS NOT NULL;

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

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Provisioned workers, counted against the fleet cap by every provisioner instance.
CREATE TABLE workers (
    id          text PRIMARY KEY,                   -- the runner id it registers under
    pool        text NOT NULL REFERENCES pools (name),
    spawned_by  text NOT NULL,                      -- the provisioner's instance id
    spawned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_pool_idx ON workers (pool);
