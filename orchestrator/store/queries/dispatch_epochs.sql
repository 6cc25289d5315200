-- Fencing for leader-only writes. Each dispatch shard's row holds the newest leader's term
-- (epoch, issued here); a claim under any other epoch is refused.

-- A new leader's term: Postgres issues the epoch, one more than any before, so a new leader
-- always fences the old one, whatever the lease store remembers (a lease bucket made anew after
-- NATS lost its storage starts its revisions again from 1).
-- name: dispatch_epoch_issue
INSERT INTO dispatch_epochs AS d (shard, epoch, holder, since)
VALUES ($1, 1, $2, now())
ON CONFLICT (shard) DO UPDATE SET epoch = d.epoch + 1, holder = EXCLUDED.holder, since = now()
RETURNING epoch;

-- name: dispatch_epoch_get
SELECT shard, epoch, holder, since FROM dispatch_epochs WHERE shard = $1;
