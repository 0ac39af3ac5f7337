-- Compare-and-append (see `HistoryStore::append`) for one or more
-- sessions: each session's append is the same compare-and-append, applied
-- atomically. On a single node one call carries many sessions (their keys
-- are declared); on a cluster, one session per call (one slot).
--
-- KEYS, three per session i (all in the session's `{sid}` slot):
--   KEYS[3i-2]  the session's history list
--   KEYS[3i-1]  the session's record (a hash: `tok`, `rtok`, `rat`, `idle`,
--               `abs`), read only when the append names a token
--   KEYS[3i]    the session's erasure marker (set by a history delete)
-- ARGV[1]   keep: the newest this many entries are kept
-- ARGV[2]   the TTL to set, in milliseconds
-- ARGV[3]   now, Unix milliseconds (for the record's deadlines)
-- then, for each session i in order:
--   the expected head: the tag (last 16 bytes) of the last entry, or ""
--     when the list is expected to be empty
--   "1" to refresh the TTL even though the list already exists, else "0"
--   the token hash (hex) the entries need the record to hold, or ""
--   n, the number of entries, then the n entries, oldest first (n >= 1)
--
-- Returns one reply per session:
--   1                 appended
--   2                 already applied: the head is the batch's last tag
--   0 | the last entry    conflict (0: the list is empty)
--   {4, 0 | last}     conflict, and the history was erased within its TTL
--   {3, rat | 0}      the record is gone, expired or holds another token
--                     (rat: when it replaced the given token, if it did)
--   an error          this session alone failed (a key of the wrong type,
--                     a stored element too short to be an entry)
--
-- The hot path is two commands per session: LINDEX and RPUSH. LTRIM runs
-- only when a list outgrows `keep`, PEXPIRE only for a new list or when
-- the caller asks (it refreshes a TTL only now and then, not per append).
-- Numbers passed to redis.call() are formatted with printf on every call:
-- pass strings.
local keep = tonumber(ARGV[1])
local trim_from = '-' .. ARGV[1]
local ttl = ARGV[2]
local now = tonumber(ARGV[3])
local out = {}
local a = 4

local function one(key, record, marker, expected, refresh, token, first, last_arg)
  if token ~= '' then
    local r = redis.pcall('HMGET', record, 'tok', 'rtok', 'rat', 'idle', 'abs')
    if r.err then
      return {err = 'WRONGTYPE session record ' .. record .. ' is not a hash'}
    end
    local live = r[1] == token and tonumber(r[4] or '0') > now and tonumber(r[5] or '0') > now
    if not live then
      if r[2] == token then
        return {3, tonumber(r[3]) or 0}
      end
      return {3, 0}
    end
  end
  local last = redis.pcall('LINDEX', key, '-1')
  if type(last) == 'table' and last.err then
    return {err = 'WRONGTYPE history key ' .. key .. ' does not hold a list'}
  end
  local head = ''
  if last then
    if #last < 16 then
      return {err = 'CORRUPT history key ' .. key .. ' ends with an element shorter than a tag'}
    end
    head = string.sub(last, -16)
  end
  if head == expected then
    local n = 0
    -- unpack() is bounded by Lua's C stack: push in chunks.
    for i = first, last_arg, 1000 do
      n = redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, last_arg)))
    end
    if n > keep then
      redis.call('LTRIM', key, trim_from, '-1')
    end
    if not last or refresh == '1' then
      redis.call('PEXPIRE', key, ttl)
    end
    return 1
  end
  local newest = ARGV[last_arg]
  if head ~= '' and #newest >= 16 and head == string.sub(newest, -16) then
    return 2
  end
  if redis.call('EXISTS', marker) == 1 then
    return {4, last or 0}
  end
  if last then
    return last
  end
  return 0
end

for k = 1, #KEYS / 3 do
  local expected = ARGV[a]
  local refresh = ARGV[a + 1]
  local token = ARGV[a + 2]
  local first = a + 4
  local last_arg = a + 3 + tonumber(ARGV[a + 3])
  a = last_arg + 1
  out[k] = one(KEYS[3 * k - 2], KEYS[3 * k - 1], KEYS[3 * k], expected, refresh, token, first, last_arg)
end
return out
