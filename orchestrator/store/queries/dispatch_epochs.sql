-- Dispatch shards and the fencing of leader-only writes. Each shard's row holds its newest
-- leader's term (epoch, issued here); a claim under any other epoch is refused, and so is a claim
-- for a pool of another shard (claim_step). How many shards there are: `dispatch_config`.

-- A new leader's term: Postgres issues the epoch, newer than any before (of every shard: one
-- sequence), so a new leader always fences the old one, whatever the lease store remembers (a
-- lease bucket made anew after NATS lost its storage starts its revisions again from 1).
-- name: dispatch_epoch_issue
INSERT INTO dispatch_epochs AS d (shard, epoch, holder, since)
VALUES ($1, nextval('dispatch_epoch_seq'), $2, now())
ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch, holder = EXCLUDED.holder, since = now()
RETURNING epoch;

-- name: dispatch_epoch_get
SELECT shard, epoch, holder, since FROM dispatch_epochs WHERE shard = $1;

-- The newest term of each of the shards $1, with how many pools each holds now; a shard nobody
-- has led yet has no epoch.
-- name: dispatch_epoch_list
SELECT s.shard, e.epoch, e.holder, e.since,
       (SELECT count(*) FROM pools p WHERE p.dispatch_shard = s.shard)::integer AS pools
FROM unnest($1::text[]) WITH ORDINALITY AS s(shard, i)
LEFT JOIN dispatch_epochs e ON e.shard = s.shard
ORDER BY s.i;

-- name: dispatch_shards_get
SELECT shards FROM dispatch_config;

-- Set the number of shards to $1; when that changes it, every pool whose shard changes with it
-- moves, in the same statement (the claim of a holder of its former shard is refused from the
-- commit on). Returns the pools that moved, with their shard before and after.
-- name: dispatch_shards_set
WITH config AS (
    UPDATE dispatch_config SET shards = $1 WHERE shards <> $1 RETURNING shards
)
UPDATE pools p SET dispatch_shard = pool_dispatch_shard(p.name, p.shard, c.shards)
FROM config c
WHERE p.dispatch_shard <> pool_dispatch_shard(p.name, p.shard, c.shards)
RETURNING p.name, old.dispatch_shard AS before, new.dispatch_shard AS after;
