-- What an append's token is checked against: the record's token hash,
-- the hash it replaced and when, and its expiry.
SELECT token_hash, replaced_hash, replaced_at, expires_at
FROM session_trail_sessions WHERE sid = ?1
