-- Adds a session to a user's index: a sorted set of session ids scored by
-- the session's absolute deadline, which expires with its longest-lived
-- member. A place the session claimed for its login (the session limit) is
-- settled: it is in the index now.
--
-- KEYS[1]   the user's index
-- KEYS[2]   the user's claims (the same hash tag)
-- ARGV[1]   the session's absolute deadline (Unix ms)
-- ARGV[2]   the session id (hex)
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(top[2])))
return 1
