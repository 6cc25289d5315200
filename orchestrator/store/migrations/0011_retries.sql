-- Retries users expect (issue 20): a job's retry policy, and the history of its attempts.
--
-- The policy (schemas/jobs.py RetryPolicy, as JSON): which ends of an attempt start another
-- (`on`: lost, failed, timed_out) and the backoff before it. NULL, for a job whose spec gave none
-- (most; and every job admitted before), is the default policy, what jobs always had: only a lost
-- runner's attempt retried, after 1 s, 2 s, 4 s ... 60 s (job_retry_delay() spells it out).
ALTER TABLE jobs ADD COLUMN retry jsonb;
-- Every attempt that ended, oldest first, written by the edge that ended it (job_attempt_ended()).
-- An array on the job rather than a table of attempts: the edge rewrites the job's row anyway, so
-- the history costs no other row, index or lock on the hot finish path; it is read with the job
-- and pruned with it; and it is bounded, one entry per attempt started (at most max_attempts).
-- Jobs that ended before this column have no history.
ALTER TABLE jobs ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]';

-- Queued jobs waiting out a backoff, for the claim to say when the first is due (the dispatcher
-- arms a timer for it). Small: a job leaves it when claimed (the claim clears not_before).
CREATE INDEX jobs_deferred_idx ON jobs (pool, not_before) WHERE state = 'queued' AND not_before IS NOT NULL;

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
