-- The take protocol (seed 003): a take-style client polls for its job's runner; one that stops
-- polling for the job's abandon_after_s is gone, and its job expires, releasing what it held.

-- When the client was last heard from (a long poll counts until it ends), and when it took the
-- runner (from then on the job is the client's: abandonment no longer applies).
ALTER TABLE jobs ADD COLUMN last_polled_at timestamptz;
ALTER TABLE jobs ADD COLUMN taken_at timestamptz;

-- What the abandonment sweep visits: live take-style jobs not taken yet, however long the queue.
CREATE INDEX jobs_abandonable_idx ON jobs (pool)
    WHERE abandon_after_s IS NOT NULL AND taken_at IS NULL AND state IN ('queued', 'assigned', 'running');

-- Servo's wire format names a job by its client's unique_id, kept in the payload (payload.servo).
CREATE INDEX jobs_servo_unique_id_idx ON jobs ((payload #>> '{servo,unique_id}')) WHERE payload ? 'servo';
