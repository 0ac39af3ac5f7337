-- Claims a place for a session among a user's sessions before its login is
-- saved (see `SessionStore::claim_user_slot`): decides against the limit
-- and reserves in one atomic step, so concurrent logins cannot exceed it.
--
-- KEYS[1]   the user's index (a sorted set of session ids scored by their
--           absolute deadline, so the lowest score is the oldest session)
-- KEYS[2]   the user's claims: logins in progress, scored by when the
--           claim lapses (the index script removes a claim once its login
--           is saved)
-- KEYS[3]   the user's sessions being ended to make room, scored by when
--           that lapses; they stay in the index (listed, revocable) until
--           they are deleted, but no longer count
-- ARGV[1]   now (Unix ms)
-- ARGV[2]   the session id
-- ARGV[3]   when this claim lapses if its login is never saved (Unix ms)
-- ARGV[4]   the most sessions the user may have
-- ARGV[5]   "refuse" or "end_oldest"
--
-- Returns {0} (refused) or {1, ended...}: the granted place and the
-- sessions the caller must end once the login is saved. Logins still in
-- progress cannot be ended: when they alone fill the limit, the answer is
-- {0} whatever the policy.
local index, claims, ending = KEYS[1], KEYS[2], KEYS[3]
local me = ARGV[2]
for _, set in ipairs({index, claims, ending}) do
  redis.call('ZREMRANGEBYSCORE', set, '-inf', ARGV[1])
end
local counted = {}
local count = 0
local candidates = {}
for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  if m ~= me and not redis.call('ZSCORE', ending, m) then
    counted[m] = true
    count = count + 1
    candidates[#candidates + 1] = m
  end
end
for _, m in ipairs(redis.call('ZRANGE', claims, 0, -1)) do
  if m ~= me and not counted[m] and not redis.call('ZSCORE', ending, m) then
    counted[m] = true
    count = count + 1
  end
end
local max = tonumber(ARGV[4])
local ended = {}
if count >= max then
  local n = count + 1 - max
  if ARGV[5] == 'refuse' or #candidates < n then
    return {0}
  end
  for i = 1, n do
    ended[i] = candidates[i]
    redis.call('ZADD', ending, ARGV[3], candidates[i])
  end
  local top = redis.call('ZRANGE', ending, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', ending, top[2])
end
redis.call('ZADD', claims, ARGV[3], me)
-- Each set lives as long as its longest-lived member.
local top = redis.call('ZRANGE', claims, -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', claims, top[2])
return {1, unpack(ended)}
