-- Deletes a session's history and leaves its erasure marker (see
-- `HistoryStore::delete`), in one step.
--
-- KEYS[1]   the session's history list
-- KEYS[2]   the session's erasure marker
-- ARGV[1]   now (Unix ms), the marker's value
-- ARGV[2]   the marker's lifetime (ms): the history TTL
--
-- Returns how many entries were removed. A key of the wrong type (a
-- poisoned or corrupt history) is deleted too, and counts as none.
local n = redis.pcall('LLEN', KEYS[1])
if type(n) ~= 'number' then
  n = 0
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return n
