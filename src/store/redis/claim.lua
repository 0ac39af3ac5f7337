-- Claims a place for a session among a user's sessions before its login is
-- saved (see `SessionStore::claim_user_slot`): decides against the limit
-- and reserves in one atomic step, so concurrent logins cannot exceed it.
--
-- KEYS[1]   the user's index (a sorted set of session ids scored by their
--           absolute deadline, so the lowest score is the oldest session)
-- KEYS[2]   the user's claims (a sorted set of session ids scored by when
--           the claim lapses); the same hash tag, so the same slot
-- ARGV[1]   now (Unix ms)
-- ARGV[2]   the session id
-- ARGV[3]   when its claim lapses if its login is never saved (Unix ms)
-- ARGV[4]   the most sessions the user may have
-- ARGV[5]   "refuse" or "end_oldest"
--
-- Returns {0} (refused) or {1, ended...}: the granted place and the
-- sessions taken out of the index to make room (the caller ends them once
-- the login is saved).
local index, claims = KEYS[1], KEYS[2]
redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', claims, '-inf', ARGV[1])
local members = {}
local count = 0
for _, set in ipairs({index, claims}) do
  for _, m in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    if m ~= ARGV[2] and not members[m] then
      members[m] = true
      count = count + 1
    end
  end
end
local max = tonumber(ARGV[4])
local ended = {}
if count >= max then
  if ARGV[5] == 'refuse' then
    return {0}
  end
  -- Only saved sessions can end; logins in progress cannot.
  local n = count + 1 - max
  for _, m in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if #ended >= n then
      break
    end
    if m ~= ARGV[2] then
      ended[#ended + 1] = m
      redis.call('ZREM', index, m)
      redis.call('ZREM', claims, m)
    end
  end
end
redis.call('ZADD', claims, ARGV[3], ARGV[2])
redis.call('PEXPIREAT', claims, ARGV[3])
return {1, unpack(ended)}
