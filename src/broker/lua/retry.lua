-- Nack for retry: park the entry under RETRY (so the old receipt is stale)
-- and make it due after DELAY_MS.
-- KEYS: stream, leases
-- ARGV: group, id, count, delay_ms
-- Returns {HELD | NOT_PENDING | STALE, due_ms}
local h = holds(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
if h ~= HELD then return {h, 0} end
local due = now_ms() + tonumber(ARGV[4])
redis.call('XCLAIM', KEYS[1], ARGV[1], RETRY, 0, ARGV[2], 'JUSTID')
redis.call('ZADD', KEYS[2], due, ARGV[2])
return {HELD, due}
