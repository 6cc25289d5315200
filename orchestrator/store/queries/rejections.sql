-- name: rejection_insert_many
INSERT INTO rejections (reason, message, field, pool, key, stream_seq, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[]);

-- A page of rejections, newest first: those older than id $3 (NULL: from the newest). Ids only
-- grow, so a walk from page to page sees each rejection there was when it began once (one
-- committed meanwhile is newer than the walk's first page, or late with an id already passed).
-- name: rejection_list
SELECT * FROM rejections
WHERE ($1::text IS NULL OR reason = $1)
  AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $2;
