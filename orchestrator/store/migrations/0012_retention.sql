-- Retention (issue 21): nothing grows for ever. Finished jobs, rejections, and the runners and
-- workers of the past are deleted once older than ORCH_RETENTION_S, and a job shape as soon as
-- no live job uses it (orchestrator/retention.py; the statements are queries/retention.sql).

-- A finished job no longer pins its shape: the claim's cost grows with the shapes it visits, so
-- a shape goes when its last live job ends, not with its finished jobs days later. A finished
-- job's shape_id is history (its shape may be gone); a live job's shape exists: the pruner
-- deletes a pool's shapes under the pool's admission lock, only those no queued, assigned or
-- running job uses, and admission looks shapes up and inserts jobs under that same lock.
ALTER TABLE jobs DROP CONSTRAINT jobs_shape_id_fkey;

-- Bumped by every deletion of the pool's shapes: a shape id a process remembered under an older
-- generation may be gone, and is looked up again (store/transitions/batches.py ShapeIds).
ALTER TABLE pools ADD COLUMN shape_generation bigint NOT NULL DEFAULT 0;

-- The pruner finds rejections by age without reading the ones it keeps.
CREATE INDEX rejections_at_idx ON rejections (at);

-- Every claim reads a pool's active runners (claim_step), as do pool_free and the fleet's
-- demand: without this index each read was a scan of every runner row ever registered.
CREATE INDEX runners_pool_state_idx ON runners (pool, state);
