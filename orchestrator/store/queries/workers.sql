-- Provisioned workers, counted against the pool's fleet cap by every provisioner instance.

-- Serializes reservations of one pool's fleet (any number of provisioner instances).
-- name: worker_fleet_lock
SELECT pg_advisory_xact_lock(hashtext('orch.fleet'), hashtext($1));

-- The pool's live workers: registered and not declared lost, or spawned less than $2 seconds
-- ago and not registered yet.
-- name: worker_count_live
SELECT count(*) FROM workers w LEFT JOIN runners r ON r.id = w.id
WHERE w.pool = $1
  AND CASE WHEN r.id IS NULL THEN w.spawned_at > now() - make_interval(secs => $2::float8)
           ELSE r.state <> 'lost' END;

-- name: worker_insert
INSERT INTO workers (id, pool, spawned_by) VALUES ($1, $2, $3);

-- A worker exited (its provisioner saw it), or will not be spawned after all.
-- name: worker_delete
DELETE FROM workers WHERE id = $1;

-- Workers that no longer count and will not again: never registered in time, or lost for an
-- hour (a lost runner may come back and register: until then it is not counted, and then it is).
-- name: worker_prune
DELETE FROM workers w
WHERE w.pool = $1
  AND CASE WHEN EXISTS (SELECT 1 FROM runners r WHERE r.id = w.id)
           THEN EXISTS (SELECT 1 FROM runners r
                        WHERE r.id = w.id AND r.state = 'lost' AND r.last_seen_at < now() - interval '1 hour')
           ELSE w.spawned_at <= now() - make_interval(secs => $2::float8) END;
