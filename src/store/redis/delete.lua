-- Deletes a session record, answering whether it existed and its user (so
-- the caller can drop it from that user's index).
--
-- KEYS[1]   the session record (a hash)
--
-- Returns {1, user} or {0}.
local user = redis.call('HGET', KEYS[1], 'user')
local n = redis.call('DEL', KEYS[1])
return {n, user}
