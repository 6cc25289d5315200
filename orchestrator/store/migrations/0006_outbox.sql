-- The transactional outbox: every job transition writes its news here in its own transaction;
-- the relay publishes the rows in `seq` order and deletes each once NATS has acknowledged it.
-- `subject` is relative to the namespace (`jobs.finished.default`): the relay prefixes it.
-- `durable` news goes to the job-events stream (JetStream, deduplicated by `id`); the rest
-- (a cancel to a runner) is core NATS, best effort, covered by sweeps and heartbeats.
CREATE TABLE outbox (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid NOT NULL,                  -- the event's own id: its Nats-Msg-Id
    subject     text NOT NULL,
    body        bytea NOT NULL,                 -- the event, JSON
    durable     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Wake the relay at once: one notification per inserting statement, folded per transaction.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The runner acknowledged the hand-off (or asked to start, which says as much): from then on
-- the assignment is the runner's, and a take client may be given it.
ALTER TABLE jobs ADD COLUMN acked_at timestamptz;
