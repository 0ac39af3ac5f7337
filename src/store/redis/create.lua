-- Creates a session on a single node in one call (see
-- `SessionStore::create_linked`): the user's session index, then the
-- user's history index, then the record, atomically.
--
-- KEYS[1]   the session record (a hash)
-- KEYS[2]   the user's session index (present when the record has a user)
-- KEYS[3]   the user's claims (the same hash tag; with KEYS[2])
-- KEYS[4]   the user's history index (present when the history is linked)
-- ARGV[1]   when the record is evicted (Unix ms; see `Record::evict_at`)
-- ARGV[2]   the session's absolute deadline (Unix ms), its index score
-- ARGV[3]   the session id (hex)
-- ARGV[4]   now (Unix ms), the history link's score
-- ARGV[5]   until when the history index lives at least (Unix ms)
-- ARGV[6]   "1" when the caller tracks keys (the local cache), else "0"
-- ARGV[7..] the record's field/value pairs
--
-- The indexes come first: a key of the wrong type fails the call before
-- the record exists, and a member whose record is missing is dropped by
-- every reader of an index. An id that exists already is refused before
-- anything is written (an id collision: the contract of `create` never
-- overwrites, as in the other stores). For a caller with client tracking
-- on, the script ends with a read of the record, so that it is tracked.
--
-- On Redis Cluster the script runs with KEYS[1] alone (the indexes live
-- in other slots and are written beside it).
--
-- Each index lives at least as long as its longest-lived member: NX sets
-- an expiry on a new index, GT only ever lengthens it.
-- Returns 1, or the error SESSIONEXISTS.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('SESSIONEXISTS a session with this id exists; it was not overwritten')
end
if #KEYS >= 3 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('PEXPIREAT', KEYS[2], ARGV[2], 'NX')
  redis.call('PEXPIREAT', KEYS[2], ARGV[2], 'GT')
end
if #KEYS == 4 then
  redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[4], ARGV[5], 'NX')
  redis.call('PEXPIREAT', KEYS[4], ARGV[5], 'GT')
end
-- unpack() is bounded by Lua's C stack: write in chunks of whole pairs.
for i = 7, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
if ARGV[6] == '1' then
  redis.call('HEXISTS', KEYS[1], 'ver')
end
return 1
