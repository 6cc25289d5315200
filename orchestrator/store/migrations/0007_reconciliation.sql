-- Runners and Postgres agree (issue 16).
--
-- A cancel of a job a runner runs is a row, not a message: the runner is told on every heartbeat
-- until it confirms (its report of the end), or until it is declared lost.
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
-- The runner's heartbeat that first did not list this job although Postgres has the runner
-- holding it. A later heartbeat composed after that one was answered, and still without the job,
-- proves the runner let it go: the job is released then (never on a single heartbeat, which may
-- have been composed before the runner took the job).
ALTER TABLE jobs ADD COLUMN unheld_seq bigint;
-- The runner's newest heartbeat reconciled: an older one arriving late reconciles nothing.
ALTER TABLE runners ADD COLUMN heartbeat_seq bigint NOT NULL DEFAULT 0;
-- A reservation (a job without payload.command) admitted without timeout_s gets this one, so a
-- reservation taken and never finished cannot hold a runner's slot for ever.
ALTER TABLE pools ADD COLUMN reservation_timeout_s double precision NOT NULL DEFAULT 3600
    CONSTRAINT pools_reservation_timeout_check CHECK (reservation_timeout_s > 0);
-- What the pools file last said of a pool (NULL: never declared there). A start applies only
-- what the file changed since, so an operator's PATCH of another field survives restarts.
ALTER TABLE pools ADD COLUMN file_config jsonb;
-- Running jobs with a timeout, for the server's own timeout sweep.
CREATE INDEX jobs_running_timeout_idx ON jobs (started_at) WHERE state = 'running' AND timeout_s IS NOT NULL;
-- Provisioned workers, wherever their provisioner runs: the fleet cap (max_workers) is counted
-- here, so a new dispatch leader (whose provisioner did not start them) counts its
-- predecessor's workers too. A row is made before its worker is spawned, in a transaction that
-- counts the pool's live workers under a lock (a reservation), and deleted when the worker exits;
-- a worker whose runner was declared lost, or that never registered in time, no longer counts.
CREATE TABLE workers (
    id          text PRIMARY KEY,                   -- the runner id it registers under
    pool        text NOT NULL REFERENCES pools (name),
    spawned_by  text NOT NULL,                      -- the provisioner's instance id
    spawned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_pool_idx ON workers (pool);
