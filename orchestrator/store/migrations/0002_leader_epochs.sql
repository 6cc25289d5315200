-- Leader election fencing.
-- The epoch is the NATS KV lease revision a dispatch leader acquired; it only grows. Every claim
-- checks it in its own transaction, so a deposed leader that has not noticed cannot claim.

CREATE TABLE dispatch_epochs (
    shard           text PRIMARY KEY,                 -- a dispatch shard ('all': every pool)
    epoch           bigint NOT NULL,                  -- the newest leader's lease revision
    holder          text,                             -- that leader's instance id
    since           timestamptz NOT NULL DEFAULT now()
);

-- Which leader's term claimed the current assignment (NULL: claimed without a lease).
ALTER TABLE jobs ADD COLUMN claim_epoch bigint;
