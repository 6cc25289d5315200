-- name: rejection_insert_many
INSERT INTO rejections (reason, message, field, pool, key, stream_seq, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[]);

-- name: rejection_list
SELECT * FROM rejections
WHERE ($1::text IS NULL OR reason = $1)
ORDER BY id DESC
LIMIT $2;
