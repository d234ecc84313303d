-- Queues with delayed messages due now.
-- KEYS: schedule   ARGV: limit
-- Returns {now, {queue names}, next due ms or -1}
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local next_due = -1
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #first > 0 then next_due = tonumber(first[2]) end
return {now, due, next_due}
