-- The transactional outbox (see the migration that made it, and orchestrator/outbox.py).

-- A transition's events, in the order given: one statement for the whole batch.
-- name: outbox_insert_many
INSERT INTO outbox (id, subject, body, durable)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::boolean[]);

-- One relay at a time: the lock is the transaction's, so it goes with a relay that dies. The
-- relay's commit (its delete of what it published) does not wait for the disk: a delete lost in
-- a crash only has its rows published again, which JetStream drops as repeats of their event ids
-- (consumers dedup beyond its window), as after a relay that died between publish and delete.
-- But see outbox_delete.
-- name: outbox_relay_lock
SELECT pg_try_advisory_xact_lock(hashtext('orchestrator outbox relay')), set_config('synchronous_commit', 'off', true);

-- The oldest events first (insert order; a row committed late is simply picked up later:
-- rows are deleted once published, never skipped by a watermark).
-- name: outbox_head
SELECT seq, id, subject, body, durable FROM outbox ORDER BY seq LIMIT $1;

-- A batch that held a core NATS row (a cancel to a runner) commits waiting for the disk after
-- all: a cancel names no attempt, and sent again after a crash it could stop the job's next one.
-- The array is read through a sub-select, as transitions.sql's head says why: planned again for
-- each batch's values (Postgres kept choosing that while the outbox held a few rows), the delete
-- cost twice its execution in planning, 60 us a batch.
-- name: outbox_delete
WITH gone AS (DELETE FROM outbox WHERE seq = ANY((SELECT $1::bigint[])::bigint[]) RETURNING durable)
SELECT set_config('synchronous_commit', 'on', true) FROM gone WHERE NOT durable LIMIT 1;

-- name: outbox_depth
SELECT count(*) FROM outbox;

-- A relay that stops tells the relays standing by (on the channel the inserts notify, with its
-- own payload): one of them publishes from now on, without waiting for its next look.
-- name: outbox_handover
SELECT pg_notify('outbox', 'handover');
