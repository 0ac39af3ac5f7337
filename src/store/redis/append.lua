-- Compare-and-append (see `HistoryStore::append`) for one or more
-- sessions: each session's append is the same compare-and-append, applied
-- atomically. On a single node one call carries many sessions (their keys
-- are declared); on a cluster, one session per call (one slot).
--
-- KEYS[i]   the i-th session's history list
-- ARGV[1]   keep: the newest this many entries are kept
-- ARGV[2]   the TTL to set, in milliseconds
-- then, for each session i in order:
--   the expected head: the tag (last 16 bytes) of the last entry, or ""
--     when the list is expected to be empty
--   "1" to refresh the TTL even though the list already exists, else "0"
--   n, the number of entries, then the n entries, oldest first (n >= 1)
--
-- Returns one reply per session: 1 (appended), 2 (already applied: the
-- head is the batch's last tag), 0 (conflict: the list is empty) or the
-- last entry (conflict).
--
-- The hot path is two commands per session: LINDEX and RPUSH. LTRIM runs
-- only when a list outgrows `keep`, PEXPIRE only for a new list or when
-- the caller asks (it refreshes a TTL only now and then, not per append).
-- Numbers passed to redis.call() are formatted with printf on every call:
-- pass strings.
local keep = tonumber(ARGV[1])
local trim_from = '-' .. ARGV[1]
local ttl = ARGV[2]
local out = {}
local a = 3
for k = 1, #KEYS do
  local key = KEYS[k]
  local expected = ARGV[a]
  local refresh = ARGV[a + 1]
  local first = a + 3
  local last_arg = a + 2 + tonumber(ARGV[a + 2])
  a = last_arg + 1

  local last = redis.call('LINDEX', key, '-1')
  local head = ''
  if last and #last >= 16 then
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
    out[k] = 1
  else
    local newest = ARGV[last_arg]
    if head ~= '' and #newest >= 16 and head == string.sub(newest, -16) then
      out[k] = 2
    elseif last then
      out[k] = last
    else
      out[k] = 0
    end
  end
end
return out
