-- Registration: the runner is active again, with what it says it offers.
-- name: runner_upsert
INSERT INTO runners (id, pool, labels, slots, taints, metadata, state, last_seen_at)
VALUES ($1, $2, $3, $4, $5, $6, 'active', now())
ON CONFLICT (id) DO UPDATE SET
    pool = EXCLUDED.pool,
    labels = EXCLUDED.labels,
    slots = EXCLUDED.slots,
    -- An operator's taints (PUT /v1/runners/{id}/taints) outlive the runner's restarts: a cloud
    -- runner that re-registers must not take back the work moved off it (seed 002).
    taints = ARRAY(SELECT DISTINCT t FROM unnest(runners.taints || EXCLUDED.taints) AS t ORDER BY t),
    metadata = EXCLUDED.metadata,
    state = 'active',
    last_seen_at = now()
RETURNING *;

-- A heartbeat ($2: its sequence number, 0 when the runner sends none): a suspect runner answers
-- again, so it is active again. Returns the old state, and the newest sequence number seen
-- before (a heartbeat not newer than it arrived late: it reconciles nothing).
-- name: runner_touch
UPDATE runners SET last_seen_at = now(),
                   state = CASE WHEN state = 'suspect' THEN 'active' ELSE state END,
                   heartbeat_seq = greatest(heartbeat_seq, $2)
WHERE id = $1 AND state <> 'lost'
RETURNING old.state, pool, old.heartbeat_seq;

-- A runner that did not ack an assignment takes no more until it heartbeats again.
-- name: runner_mark_suspect
UPDATE runners SET state = 'suspect' WHERE id = $1 AND state = 'active';

-- A page of runners in id order: those after id $1 (NULL: from the first), at most $2 (NULL: all).
-- An id never changes, so a walk from page to page sees each runner once.
-- name: runner_list
SELECT r.*, (SELECT count(*) FROM jobs j
             WHERE j.runner_id = r.id AND j.state IN ('assigned', 'running')) AS busy
FROM runners r
WHERE ($1::text IS NULL OR r.id > $1)
ORDER BY r.id
LIMIT $2;

-- An operator sets a runner's taints (the exact set). Returns the runner, none if unknown.
-- name: runner_set_taints
UPDATE runners SET taints = ARRAY(SELECT DISTINCT t FROM unnest($2::text[]) AS t ORDER BY t)
WHERE id = $1
RETURNING *;

-- Which of these runner ids have registered (a provisioned worker is starting until it has).
-- name: runner_list_known
SELECT id FROM runners WHERE id = ANY($1::text[]);

-- Runners silent for longer than the TTL are lost.
-- name: runner_mark_lost
UPDATE runners SET state = 'lost'
WHERE state <> 'lost' AND last_seen_at < coalesce($2::timestamptz, now()) - make_interval(secs => $1)
RETURNING id, pool;
