-- Fencing for leader-only writes. Each dispatch shard's row holds the newest lease revision
-- (epoch) any leader has claimed under; a claim under an older epoch is refused.

-- Record a leader's term: only ever forward. Returns the row when the stored epoch is now $2,
-- nothing when a newer one is stored (the caller has been deposed).
-- name: dispatch_epoch_advance
INSERT INTO dispatch_epochs AS d (shard, epoch, holder, since)
VALUES ($1, $2, $3, now())
ON CONFLICT (shard) DO UPDATE SET
    epoch = EXCLUDED.epoch,
    holder = EXCLUDED.holder,
    since = CASE WHEN d.epoch < EXCLUDED.epoch THEN EXCLUDED.since ELSE d.since END
WHERE d.epoch <= EXCLUDED.epoch
RETURNING *;

-- Inside a claim: a shared lock on the shard's epoch, held to commit. The leader's own claim
-- steps share it (pools drain in parallel); a successor's advance waits for them to commit,
-- and every claim that starts after the advance sees the newer epoch.
-- name: dispatch_epoch_hold
SELECT epoch FROM dispatch_epochs WHERE shard = $1 FOR SHARE;

-- name: dispatch_epoch_get
SELECT shard, epoch, holder, since FROM dispatch_epochs WHERE shard = $1;
