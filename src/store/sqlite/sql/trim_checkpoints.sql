-- ?1 the oldest time kept.
DELETE FROM session_trail_checkpoints WHERE at < ?1
