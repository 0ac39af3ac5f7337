-- Applies one request's changes to a session record (see
-- `SessionStore::update`), only if the record exists, has not expired, and
-- its token hash is the one the request was made under: a destroyed or
-- expired session is never resurrected, and a rotated one is never written
-- with the old token.
--
-- KEYS[1]   the session record (a hash)
-- ARGV[1]   the token hash the update was made under (hex)
-- ARGV[2]   the new token hash when the update rotates the token, else ""
-- ARGV[3]   the new idle deadline (Unix ms) when it slides, else ""
-- ARGV[4]   now (Unix ms)
-- ARGV[5]   how long an expired record is kept (ms; see `Record::evict_at`)
-- ARGV[6]   n: the number of fields to set; then n field/value pairs
-- then      m: the number of fields to delete; then m fields
--
-- Returns {1, old user, new version} (applied), {2} (this rotation was
-- applied by an earlier attempt of the same call) or {0} (missing).
--
-- Every applied update increments the record's `ver` field (in the same
-- HSET as the first changed fields), and the script ends with a read of the
-- record: for a caller with client tracking on (the
-- store's local cache), that read keeps the record tracked after the write,
-- and the version tells the caller whether its cached copy held the state
-- just before this write.
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'tok', 'rtok', 'user', 'abs', 'ver', 'idle')
if not cur[1] then
  return {0}
end
local now = tonumber(ARGV[4])
if tonumber(cur[4] or '0') <= now or tonumber(cur[6] or '0') <= now then
  return {0}
end
if cur[1] ~= ARGV[1] then
  if ARGV[2] ~= '' and cur[1] == ARGV[2] and cur[2] == ARGV[1] then
    return {2}
  end
  return {0}
end
local ver = (tonumber(cur[5]) or 0) + 1
local set_end = 6 + 2 * tonumber(ARGV[6])
-- unpack() is bounded by Lua's C stack: write in chunks (of whole pairs);
-- the first one also sets the new version.
redis.call('HSET', key, 'ver', ver, unpack(ARGV, 7, math.min(1006, set_end)))
for i = 1007, set_end, 1000 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, set_end)))
end
local del_end = set_end + 1 + tonumber(ARGV[set_end + 1])
for i = set_end + 2, del_end, 1000 do
  redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 999, del_end)))
end
if ARGV[3] ~= '' then
  -- The record lives until the nearer deadline, and then a while longer so
  -- the layer can tell a returning client why its session ended.
  local at = tonumber(ARGV[3])
  if cur[4] and tonumber(cur[4]) < at then
    at = tonumber(cur[4])
  end
  redis.call('PEXPIREAT', key, string.format('%.0f', at + tonumber(ARGV[5])))
end
-- The closing read keeps the record tracked for a caller with tracking on.
redis.call('HEXISTS', key, 'ver')
return {1, cur[3], ver}
