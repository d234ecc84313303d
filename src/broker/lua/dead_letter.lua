-- Move one entry to the DLQ: append its dead-letter copy, ack the
-- original and drop its lease, in one step. Checks that the expected
-- delivery still holds the entry, so two replicas never both move it.
-- KEYS: stream, leases, dlq
-- ARGV: group, id, holder, count, data
local consumer, n = pending(KEYS[1], ARGV[1], ARGV[2])
if consumer == nil then return {NOT_PENDING, ''} end
if consumer ~= ARGV[3] or n ~= tonumber(ARGV[4]) then return {STALE, ''} end
local dlq_id = redis.call('XADD', KEYS[3], '*', 'data', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return {HELD, dlq_id}
