-- Every change of a job's state: one statement per edge of the state machine, used only by
-- orchestrator/store/transitions/. Each re-checks the edge is legal in its WHERE (state, runner,
-- attempt), so a stale or repeated report changes nothing and comes back empty, and writes the
-- edge's events to the outbox in the same statement (`news`, through job_news(): see the
-- migration that made it), in job id order and, for one job, in the order they happened.
--
-- Transition timestamps use clock_timestamp(), not the transaction start: they order events as
-- they committed (a slot freed, then taken), so the history can be checked and measured.
-- RETURNING old.* (PostgreSQL 18) gives what the row was, for the events. The hot edges (start,
-- finish, acknowledge) return only what their events need: decoding every jsonb column of the
-- row back cost more than the edge itself.
--
-- A batch's first array is read through a sub-select, `unnest((SELECT $1::uuid[]), ...)`, where
-- planning each batch again costs more than running it (the admission and the finish: 0.6 and
-- 0.9 ms of planning, 0.25 of execution, for a batch of one; job_news() is inlined at every
-- plan; the ack was planned again at 4 calls in 10 at 400 jobs/s, 0.9 ms each; the start too).
-- The planner cannot count that array (it assumes 10 rows, as for a parameter): a plan made for a
-- batch's values then costs no less than the plan made once, and Postgres keeps the latter after
-- its first five (plan_cache_mode = auto), planned again only when ANALYZE updates the
-- statistics. The right plan for 1 row or 500 is the same: each job found by its primary key.
--
-- The batched edges of runners' jobs (ack, start, finish) make sure of that plan: each job named
-- is looked up in a lateral sub-select (OFFSET 0: one lookup per job) by its id, its runner and
-- attempt (the ack: the assignment's assigned_at) and that it has not ended, which no index but
-- the primary key serves, and locked there, in the order given (news.columns: by id). The state
-- the edge requires is compared outside, on the row as locked: inside, the indexes partial on
-- `state` would serve too. So a late report of an attempt whose job was requeued (attempt kept)
-- and claimed again for the same runner locks that row for nothing (it changes nothing). Joined
-- to the jobs in that state, as these statements were, a plan made from statistics that said few
-- jobs were (taken before a burst) read them through one of those indexes and compared each with
-- every job named: a finish of 225 jobs compared 50,400 pairs (64 ms) in the throughput benchmark.

-- Admit a batch in one statement. Labels and tolerations travel as JSON text (one array per
-- job): Postgres arrays cannot be ragged, so a text[][] parameter could not carry them. The
-- jsonb columns are not returned: the caller has them, and decoding them back cost a third of
-- the batch. A reservation (no payload.command) given no timeout_s takes its pool's
-- reservation_timeout_s, so it cannot hold a runner's slot for ever.
-- name: job_insert_many
WITH admitted AS (
INSERT INTO jobs AS j (id, key, spec, pool, labels, plan, tenant, priority, payload, timeout_s,
                  max_attempts, abandon_after_s, token_hash, trace_context, tolerations, retry, run_at, not_before,
                  concurrency_key, concurrency_limit, on_conflict, rate_limit_key, shape_id)
SELECT r.id, r.key, r.spec, r.pool, ARRAY(SELECT jsonb_array_elements_text(r.labels::jsonb)), r.plan, r.tenant,
       r.priority, r.payload,
       coalesce(r.timeout_s, CASE WHEN NOT r.payload ? 'command'
                                  THEN (SELECT reservation_timeout_s FROM pools WHERE name = r.pool) END),
       r.max_attempts, r.abandon_after_s, r.token_hash, r.trace_context,
       ARRAY(SELECT jsonb_array_elements_text(r.tolerations::jsonb)), r.retry, d.run_at, d.run_at, r.concurrency_key,
       r.concurrency_limit, r.on_conflict, r.rate_limit_key, r.shape_id
FROM unnest((SELECT $1::uuid[]), $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[], $7::text[], $8::integer[],
            $9::jsonb[], $10::float8[], $11::integer[], $12::float8[], $13::bytea[], $14::jsonb[], $15::text[],
            $16::jsonb[], $17::timestamptz[], $18::float8[], $19::text[], $20::integer[], $21::text[], $22::text[],
            $23::bigint[])
     AS r(id, key, spec, pool, labels, plan, tenant, priority, payload, timeout_s, max_attempts,
          abandon_after_s, token_hash, trace_context, tolerations, retry, run_at, delay_s, concurrency_key,
          concurrency_limit, on_conflict, rate_limit_key, shape_id)
-- A delayed job is due at its run_at, or delay_s after its admission by the database's clock (the
-- clock the claim compares with).
CROSS JOIN LATERAL (SELECT coalesce(r.run_at, clock_timestamp() + make_interval(secs => r.delay_s)) AS run_at) d
ON CONFLICT (key) DO NOTHING
RETURNING j AS job, id, key, pool, labels, plan, tenant, priority, timeout_s, max_attempts, abandon_after_s,
          tolerations, state, attempt, runner_id, exit_code, reason, created_at, assigned_at, started_at, finished_at,
          run_at, concurrency_key, concurrency_limit, on_conflict, rate_limit_key
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM admitted a
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, a.job) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news('admitted', e.job, e.id, e.at) n
    ORDER BY a.id
)
SELECT id, key, pool, labels, plan, tenant, priority, timeout_s, max_attempts, abandon_after_s, tolerations, state,
       attempt, runner_id, exit_code, reason, created_at, assigned_at, started_at, finished_at, run_at,
       concurrency_key, concurrency_limit, on_conflict, rate_limit_key
FROM admitted;

-- The runner acknowledged these hand-offs (job, runner, the assignment's assigned_at): the
-- assignment is the runner's now. Already acknowledged (its runner asked to start: the usual
-- case, as the dispatcher records acks only after services/dispatch/handoff.py's
-- ACK_RECORD_DELAY_S) or undone meanwhile: nothing. A row another edge holds is waited for, then
-- looked at again: skipped, an ack that met a take's poll was lost for good. (A row held past
-- lock_timeout fails the batch: its jobs not started are requeued by the unstarted sweep.)
-- Each job is found as the batched edges find theirs (the head of this file).
-- name: job_acknowledge_many
WITH changed AS (
UPDATE jobs j SET acked_at = clock_timestamp()
FROM unnest((SELECT $1::uuid[]), $2::text[], $3::timestamptz[]) AS r(id, runner_id, assigned_at)
CROSS JOIN LATERAL (SELECT j2.id, j2.state FROM jobs j2
                    WHERE j2.id = r.id AND j2.runner_id = r.runner_id AND j2.assigned_at = r.assigned_at
                      AND j2.acked_at IS NULL AND j2.finished_at IS NULL
                    OFFSET 0 FOR NO KEY UPDATE) l
WHERE j.id = l.id AND l.state = 'assigned'
RETURNING j AS job, j.id, j.pool, j.state, j.runner_id, j.attempt
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news('assigned', e.job, e.id, e.at) n
    ORDER BY (c.job).id
)
SELECT id, pool, state, runner_id, attempt FROM changed;

-- Assignments back to the queue, not counted as an attempt: a hand-off the runner refused or
-- did not ack ($1 jobs of runner $2), or one never started within $3 seconds (the dispatcher
-- died mid hand-off, or the runner's start request failed; a late start request is refused).
-- name: job_unassign
WITH changed AS (
UPDATE jobs SET state = 'queued', runner_id = NULL, assigned_at = NULL, acked_at = NULL, unheld_seq = NULL
WHERE state = 'assigned'
  AND (($2::text IS NOT NULL AND runner_id = $2 AND id = ANY($1::uuid[]))
       OR ($3::float8 IS NOT NULL
           AND assigned_at < coalesce($4::timestamptz, now()) - make_interval(secs => $3::float8)))
RETURNING jobs AS job, new.*, old.runner_id AS previous_runner_id
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news('requeued', e.job, e.id, e.at, c.previous_runner_id, $5) n
    ORDER BY (c.job).id
)
SELECT (c.job).*, c.previous_runner_id FROM changed c;

-- Permission to start: only the runner a job is assigned to, for that very attempt. Asking
-- to start acknowledges the hand-off too (`acked_now`: it had not been recorded yet).
-- Batched: one row per request, as arrays.
-- name: job_start_many
WITH changed AS (
UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, started_at = c.now,
                  acked_at = coalesce(j.acked_at, c.now)
FROM unnest((SELECT $1::uuid[]), $2::text[], $3::int[]) AS r(id, runner_id, attempt)
CROSS JOIN LATERAL (SELECT j2.id, j2.state FROM jobs j2
                    WHERE j2.id = r.id AND j2.runner_id = r.runner_id AND j2.attempt + 1 = r.attempt
                      AND j2.finished_at IS NULL
                    OFFSET 0 FOR NO KEY UPDATE) l,
     (SELECT clock_timestamp() AS now) c
WHERE j.id = l.id AND l.state = 'assigned'
RETURNING j AS job, j.id, j.pool, j.state, j.runner_id, j.attempt, old.acked_at IS NULL AS acked_now
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c CROSS JOIN (VALUES (1, 'assigned'), (2, 'started')) k(i, kind)
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job, k.kind) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(e.kind, e.job, e.id, e.at) n
    WHERE k.kind <> 'assigned' OR c.acked_now  -- not acknowledged before: the start says as much
    ORDER BY (c.job).id, k.i
)
SELECT id, pool, state, runner_id, attempt, acked_now FROM changed;

-- The end of an attempt, as its runner reports it (only a running one: a late repeat of an
-- attempt's report must not end the job's next assignment). Batched like job_start_many. An end
-- the job's retry policy retries (`failed`, `timed_out`; job_retry_delay(), evaluated only for
-- those and once per job: `retry_s`) while attempts remain, and no cancel is pending, is not the
-- job's end: it goes back to the queue, claimable after the backoff, with `requeued` news naming
-- the outcome. Any other end is final (`finished`). Either way the attempt joins the history.
-- name: job_finish_many
WITH changed AS (
UPDATE jobs j SET
    state = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN r.state ELSE 'queued' END,
    not_before = CASE WHEN j.cancel_requested_at IS NULL THEN c.now + make_interval(secs => r.retry_s) END,
    exit_code = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN r.exit_code END,
    reason = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN r.reason END,
    finished_at = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN c.now END,
    runner_id = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN j.runner_id END,
    assigned_at = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN j.assigned_at END,
    acked_at = CASE WHEN r.retry_s IS NULL OR j.cancel_requested_at IS NOT NULL THEN j.acked_at END,
    unheld_seq = NULL,
    attempts = job_attempt_ended(j, r.state, r.exit_code, r.reason, c.now)
FROM (SELECT r.*, CASE WHEN r.state IN ('failed', 'timed_out')
                       THEN (SELECT job_retry_delay(p.retry, r.state, r.attempt, p.max_attempts)
                             FROM jobs p WHERE p.id = r.id) END AS retry_s
      FROM unnest((SELECT $1::uuid[]), $2::text[], $3::int[], $4::text[], $5::int[], $6::text[])
           AS r(id, runner_id, attempt, state, exit_code, reason)) r
CROSS JOIN LATERAL (SELECT j2.id, j2.state FROM jobs j2
                    WHERE j2.id = r.id AND j2.runner_id = r.runner_id AND j2.attempt = r.attempt
                      AND j2.finished_at IS NULL
                    OFFSET 0 FOR NO KEY UPDATE) l,
     (SELECT clock_timestamp() AS now) c
WHERE j.id = l.id AND l.state = 'running'
RETURNING j AS job, j.id, j.pool, j.state, j.runner_id, j.attempt, old.runner_id AS previous_runner_id,
          r.state AS outcome, r.exit_code AS reported_exit_code, r.reason AS reported_reason, j.concurrency_key
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(CASE c.state WHEN 'queued' THEN 'requeued' ELSE 'finished' END, e.job, e.id, e.at,
                                c.previous_runner_id, c.outcome) n
    ORDER BY (c.job).id
)
-- For the transition log: the runner the attempt ended on, and what ended it (a requeue's why);
-- for the wakes, its concurrency key (its room is free again).
SELECT id, pool, state, coalesce(runner_id, previous_runner_id) AS runner_id, attempt, reported_exit_code AS exit_code,
       CASE state WHEN 'queued' THEN outcome ELSE reported_reason END AS reason, concurrency_key
FROM changed;

-- The client of a reservation ends it (POST /v1/jobs/{id}/finish): recorded now; its runner is
-- then told to let go, and its report of the end, arriving later, finds the job already ended.
-- name: job_finish_held
WITH changed AS (
UPDATE jobs j SET state = $2, exit_code = $3, reason = $4, finished_at = c.now,
                  attempts = job_attempt_ended(j, $2, $3, $4, c.now)
FROM (SELECT clock_timestamp() AS now) c
WHERE id = $1 AND state IN ('assigned', 'running')
RETURNING j AS job
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c CROSS JOIN (VALUES (1, 'finished'), (2, 'cancel')) k(i, kind)
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job, k.kind) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(e.kind, e.job, e.id, e.at, (c.job).runner_id) n
    ORDER BY (c.job).id, k.i
)
SELECT (c.job).* FROM changed c;

-- A cancel: a queued job ends at once, and so does an assigned one (nothing runs before its
-- runner is granted the start, which this makes stale); its runner, if any, is told to let go.
-- Jobs $1, each with its reason ($2: 'cancelled' by its producer, or what superseded it).
-- name: job_cancel_unstarted
WITH changed AS (
UPDATE jobs j SET state = 'cancelled', reason = r.reason, finished_at = clock_timestamp()
FROM unnest($1::uuid[], $2::text[]) AS r(id, reason)
WHERE j.id = r.id AND j.state IN ('queued', 'assigned')
RETURNING j AS job
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c CROSS JOIN (VALUES (1, 'finished'), (2, 'cancel')) k(i, kind)
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job, k.kind) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(e.kind, e.job, e.id, e.at, (c.job).runner_id) n
    ORDER BY (c.job).id, k.i
)
SELECT (c.job).* FROM changed c;

-- A cancel of a running job is recorded: its runner is told now and on every heartbeat until it
-- reports the end (or is lost); the slot is freed then, not before the process is gone.
-- Jobs $1.
-- name: job_cancel_request
WITH changed AS (
UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp())
WHERE id = ANY($1::uuid[]) AND state = 'running'
RETURNING jobs AS job
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news('cancel', e.job, e.id, e.at, (c.job).runner_id) n
    ORDER BY (c.job).id
)
SELECT (c.job).* FROM changed c;

-- Jobs held against runners that no longer hold them: runners lost ($1, nothing held), one that
-- registered again holding $2, one whose heartbeats show it let them go ($3: the newest of
-- its heartbeats answered before this one was composed; only jobs a heartbeat marked at or
-- before it go, see job_mark_unheld), or one that stopped, killing the attempts $4/$5 (job ids,
-- attempt numbers: only those, if still running on it). A cancelled job ends `cancelled`; an assigned one goes
-- back to the queue as if never handed off; a running one is an attempt spent (`lost` in its
-- history), requeued after its backoff if its retry policy retries `lost` (the default) and
-- attempts remain, failed with `runner_lost` otherwise.
-- name: job_release_from_runners
WITH changed AS (
UPDATE jobs j SET
    state = d.next,
    not_before = c.now + make_interval(secs => d.retry_s),
    reason = CASE d.next WHEN 'queued' THEN j.reason WHEN 'cancelled' THEN 'cancelled' ELSE 'runner_lost' END,
    finished_at = CASE WHEN d.next = 'queued' THEN NULL ELSE c.now END,
    runner_id = CASE WHEN d.next = 'queued' THEN NULL ELSE j.runner_id END,
    assigned_at = CASE WHEN d.next = 'queued' THEN NULL ELSE j.assigned_at END,
    acked_at = CASE WHEN d.next = 'queued' THEN NULL ELSE j.acked_at END,
    unheld_seq = NULL,
    attempts = job_attempt_ended(j, 'lost', NULL, 'runner_lost', c.now)
FROM (SELECT id, retry_s, CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                               WHEN state = 'assigned' OR retry_s IS NOT NULL THEN 'queued'
                               ELSE 'failed' END AS next
      FROM (SELECT id, state, cancel_requested_at,
                   CASE WHEN state = 'running' AND cancel_requested_at IS NULL
                        THEN job_retry_delay(retry, 'lost', attempt, max_attempts) END AS retry_s
            FROM jobs
            WHERE runner_id = ANY($1::text[]) AND state IN ('assigned', 'running') AND NOT (id = ANY($2::uuid[]))
              AND ($3::bigint IS NULL
                   OR (unheld_seq <= $3 AND (state = 'running' OR acked_at IS NOT NULL)))
              AND ($4::uuid[] IS NULL
                   OR (state = 'running' AND (id, attempt) IN (SELECT * FROM unnest($4::uuid[], $5::int[]))))
            ORDER BY id FOR UPDATE) locked) d,
     (SELECT clock_timestamp() AS now) c
WHERE j.id = d.id
RETURNING j AS job, old.runner_id AS previous_runner_id
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c CROSS JOIN (VALUES (1, 'requeued'), (2, 'finished')) k(i, kind)
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job, k.kind) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(e.kind, e.job, e.id, e.at, c.previous_runner_id, 'runner_lost') n
    WHERE (k.kind = 'requeued') = ((c.job).state = 'queued')  -- requeued while attempts remain, else ended
    ORDER BY (c.job).id, k.i
)
SELECT (c.job).*, c.previous_runner_id FROM changed c;

-- A heartbeat of runner $1 (its sequence number $3) holding $2: jobs Postgres has it holding
-- (running, or assigned and acknowledged) that it does not list are marked with this heartbeat,
-- unless marked already; those it lists lose their mark.
-- name: job_mark_unheld
UPDATE jobs SET unheld_seq = CASE WHEN id = ANY($2::uuid[]) THEN NULL ELSE $3::bigint END
WHERE runner_id = $1 AND state IN ('assigned', 'running') AND (state = 'running' OR acked_at IS NOT NULL)
  AND CASE WHEN id = ANY($2::uuid[]) THEN unheld_seq IS NOT NULL ELSE unheld_seq IS NULL END;

-- What runner $1 must stop of the jobs it holds ($2): a cancel is pending (it stops the process
-- and reports `cancelled`), or the job is no longer its own (ended, requeued, another runner's,
-- unknown): it kills it and reports nothing.
-- name: job_stop_orders
SELECT h.id, j.state, j.runner_id, j.cancel_requested_at IS NOT NULL AS cancel_pending
FROM unnest($2::uuid[]) AS h(id) LEFT JOIN jobs j ON j.id = h.id
WHERE j.id IS NULL OR j.runner_id IS DISTINCT FROM $1 OR j.state NOT IN ('assigned', 'running')
   OR j.cancel_requested_at IS NOT NULL;

-- The server's own timeout: a job still running $1 seconds (the runner's kill grace and a
-- margin for its report) past its timeout_s ends `timed_out` whatever its runner says.
-- An attempt its job's retry policy retries (`timed_out`) while attempts remain goes back to the
-- queue after its backoff (`requeued`), as when its runner reports the timeout (job_finish_many);
-- either way the runner is told to let go.
-- name: job_time_out
WITH changed AS (
UPDATE jobs j SET
    state = CASE WHEN d.retry_s IS NULL THEN 'timed_out' ELSE 'queued' END,
    not_before = c.now + make_interval(secs => d.retry_s),
    finished_at = CASE WHEN d.retry_s IS NULL THEN c.now END,
    reason = CASE WHEN d.retry_s IS NULL THEN d.why END,
    runner_id = CASE WHEN d.retry_s IS NULL THEN j.runner_id END,
    assigned_at = CASE WHEN d.retry_s IS NULL THEN j.assigned_at END,
    acked_at = CASE WHEN d.retry_s IS NULL THEN j.acked_at END,
    unheld_seq = NULL,
    attempts = job_attempt_ended(j, 'timed_out', NULL, d.why, c.now)
FROM (SELECT id, format('timed out: running past timeout_s=%s and no end reported', timeout_s) AS why,
             CASE WHEN cancel_requested_at IS NULL
                  THEN job_retry_delay(retry, 'timed_out', attempt, max_attempts) END AS retry_s
      FROM jobs
      WHERE state = 'running' AND timeout_s IS NOT NULL
        AND started_at < coalesce($2::timestamptz, now()) - make_interval(secs => timeout_s + $1::float8)
      ORDER BY id FOR UPDATE) d,
     (SELECT clock_timestamp() AS now) c
WHERE j.id = d.id
RETURNING j AS job, old.runner_id AS previous_runner_id
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c
    CROSS JOIN LATERAL (VALUES (1, CASE (c.job).state WHEN 'queued' THEN 'requeued' ELSE 'finished' END), (2, 'cancel'))
        k(i, kind)
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job, k.kind) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(e.kind, e.job, e.id, e.at, c.previous_runner_id, 'timed_out') n
    ORDER BY (c.job).id, k.i
)
SELECT (c.job).* FROM changed c;

-- A pool change made these queued jobs unrunnable: they end now, in the change's transaction.
-- name: job_fail_queued_shape
WITH changed AS (
UPDATE jobs SET state = 'failed', reason = $4, finished_at = clock_timestamp()
WHERE pool = $1 AND state = 'queued' AND labels = $2::text[] AND plan IS NOT DISTINCT FROM $3::text
RETURNING jobs AS job
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news('finished', e.job, e.id, e.at) n
    ORDER BY (c.job).id
)
SELECT (c.job).* FROM changed c;

-- Take-style jobs whose client has not polled for abandon_after_s (counted from admission until
-- the first poll), and has not taken its runner: expired, releasing the slot a runner holds for it.
-- name: job_expire_abandoned
WITH changed AS (
UPDATE jobs j SET state = 'expired', reason = 'abandoned', finished_at = c.now,
                  attempts = job_attempt_ended(j, 'expired', NULL, 'abandoned', c.now)
FROM (SELECT clock_timestamp() AS now) c
WHERE abandon_after_s IS NOT NULL AND taken_at IS NULL AND state IN ('queued', 'assigned', 'running')
  AND coalesce(last_polled_at, created_at) < coalesce($1::timestamptz, now()) - make_interval(secs => abandon_after_s)
RETURNING j AS job
), news AS (
    INSERT INTO outbox (id, subject, body, durable)
    SELECT n.* FROM changed c CROSS JOIN (VALUES (1, 'expired'), (2, 'finished'), (3, 'cancel')) k(i, kind)
    CROSS JOIN LATERAL (SELECT uuidv7() AS id, clock_timestamp() AS at, c.job, k.kind) e  -- per row: it names the row
    CROSS JOIN LATERAL job_news(e.kind, e.job, e.id, e.at, (c.job).runner_id) n
    ORDER BY (c.job).id, k.i
)
SELECT (c.job).* FROM changed c;

-- A dispatch step's claim (migration 0016's `claim_step`): $1 pool, $2 at most this many jobs,
-- $3 / $4 the leader's shard and epoch (NULL without a lease). The jobs claimed, then one row that
-- sums the step up (its status, in-flight count, when the pool is due again, what it held back).
-- Its commit does not wait for the WAL to reach the disk (synchronous_commit off for this
-- statement's transaction): a claim is a plan until its runner's start, and the start's commit,
-- which waits, flushes the claim with it. A crash before that loses the claim, the job is queued
-- again, and the lost hand-off's start is refused (the job is not assigned to its runner), unless
-- the job was claimed again for the same runner: then it is that claim's start, of the same job
-- on the same runner. Every edge acting on a claim (ack, start, unassign, heartbeat, a new term)
-- commits waiting, and so flushes the claim before its own effects are seen. Half a millisecond
-- to a millisecond off every step, with nothing queued too (the pool's row lock is a write).
-- tests/system/test_postgres_restart.py crashes Postgres between a claim and its flush.
-- name: job_claim_step
SELECT s.* FROM set_config('synchronous_commit', 'off', true), claim_step($1, $2, $3, $4) s;
