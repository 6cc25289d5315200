-- The news of a job transition is composed by the statement that makes it (issue 15): each edge
-- in queries/transitions.sql inserts its events into the outbox itself, so an edge is one
-- statement (no transaction round trips around it) and no event is built twice, in two languages.
--
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

-- Wake the relay only when a statement inserted something: an edge that changed nothing inserts
-- no news, yet its statement-level trigger fires all the same.
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM added) THEN
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END
$$;
