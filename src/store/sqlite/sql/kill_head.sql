-- An expired list being deleted: expired at any time an operation may
-- hold (an erasure stays remembered).
UPDATE session_trail_history_heads SET expires_at = 0 WHERE sid = ?1
