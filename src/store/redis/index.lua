-- Adds a session to a user's index: a sorted set of session ids scored by
-- the session's absolute deadline, which expires with its longest-lived
-- member.
--
-- KEYS[1]   the user's index
-- ARGV[1]   the session's absolute deadline (Unix ms)
-- ARGV[2]   the session id (hex)
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(top[2])))
return 1
