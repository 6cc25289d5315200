-- Operator and client actions of the HTTP API.

-- Drain a runner: it keeps what it runs and is given nothing more (claims take active runners
-- only) until it registers again. A lost runner is left as it is.
-- name: runner_drain
UPDATE runners SET state = 'draining' WHERE id = $1 AND state <> 'lost'
RETURNING *;

-- Jobs waiting and in flight, per pool.
-- name: pool_depth_list
SELECT p.name AS pool,
       count(j.id) FILTER (WHERE j.state = 'queued') AS queued,
       count(j.id) FILTER (WHERE j.state = 'assigned') AS assigned,
       count(j.id) FILTER (WHERE j.state = 'running') AS running
FROM pools p LEFT JOIN jobs j ON j.pool = p.name AND j.state IN ('queued', 'assigned', 'running')
GROUP BY p.name
ORDER BY p.name;
