-- Extend a lease to now + MS. Re-claiming to the same holder with JUSTID
-- resets the entry's idle time without counting a delivery; the new score
-- still vouches for the attempt (see lease_score).
-- KEYS: stream, leases
-- ARGV: group, id, count, ms
-- Returns {HELD | NOT_PENDING | STALE, lease_end_ms}
local h = holds(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
if h ~= HELD then return {h, 0} end
local due = now_ms() + tonumber(ARGV[4])
redis.call('XCLAIM', KEYS[1], ARGV[1], HOLDER, 0, ARGV[2], 'JUSTID')
redis.call('ZADD', KEYS[2], lease_score(due, tonumber(ARGV[3])), ARGV[2])
return {HELD, due}
