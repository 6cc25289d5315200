-- Admission: a durable record of what the JetStream door refused, and the drain-rate index
-- behind Retry-After.

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
