-- Schedules (issue 23): a job spec submitted on a cron, fired by the dispatch leader.
--
-- `handled_through` is the schedule's position: every fire time up to it has been handled (fired,
-- or skipped as catch_up or overlap says), and the next is computed from it, never from now. A
-- fire moves it in the same transaction as the admission of the fired job, compare-and-set on
-- its old value and the schedule's `version`, so a fire time is handled once however many
-- leaders try; the job's key (`schedule:<name>:<fire time>`) makes a repeat the same job anyway.
-- A new schedule, a changed cron or time zone, and an unpause set it to now: times before that
-- never fire. `next_fire_at` is the first fire time after it (computed by the scheduler, which
-- reads the cron), what the scheduler's timer waits for.
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
