-- The transactional outbox (see the migration that made it, and orchestrator/outbox.py).

-- A transition's events, in the order given: one statement for the whole batch.
-- name: outbox_insert_many
INSERT INTO outbox (id, subject, body, durable)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::boolean[]);

-- One relay at a time: the lock is its session's, held while the session lives (orchestrator/store/
-- store.py, RelaySession, says why and how it goes).
-- name: outbox_relay_lock
SELECT pg_try_advisory_lock(hashtext('orchestrator outbox relay'));

-- The oldest events first (insert order; a row committed late is simply picked up later:
-- rows are deleted once published, never skipped by a watermark).
-- name: outbox_head
SELECT seq, id, subject, body, durable FROM outbox ORDER BY seq LIMIT $1;

-- A batch that held a core NATS row (a cancel to a runner) commits waiting for the disk after
-- all (set for this statement's own transaction; the relay's session does not wait): a cancel
-- names no attempt, and sent again after a crash it could stop the job's next one.
-- name: outbox_delete
WITH gone AS (DELETE FROM outbox WHERE seq = ANY($1::bigint[]) RETURNING durable)
SELECT set_config('synchronous_commit', 'on', true) FROM gone WHERE NOT durable LIMIT 1;

-- name: outbox_depth
SELECT count(*) FROM outbox;
