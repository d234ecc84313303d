-- Move one entry to the DLQ: append its dead-letter copy, ack the
-- original and drop its lease, in one step. Checks that the expected
-- delivery still holds the entry, so two replicas never both move it.
-- The copy keeps the entry's ordering key (a requeue rejoins the key at
-- its end), and the key's next entry falls due: dead-lettering releases it.
-- KEYS: stream, leases, dlq
-- ARGV: group, id, holder, count, data
local consumer, n = pending(KEYS[1], ARGV[1], ARGV[2])
if consumer == nil then return {NOT_PENDING, ''} end
if consumer ~= ARGV[3] or n ~= tonumber(ARGV[4]) then return {STALE, ''} end
local key = ''
if redis.call('EXISTS', KEYS[1] .. ':order:' .. ARGV[1]) == 1 then key = entry_key(KEYS[1], ARGV[2]) end
local dlq_id
if key ~= '' then
  dlq_id = redis.call('XADD', KEYS[3], '*', 'data', ARGV[5], ORDERING, key)
else
  dlq_id = redis.call('XADD', KEYS[3], '*', 'data', ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
order_settle(KEYS[1], ARGV[1], KEYS[2], {ARGV[2]}, {key})
return {HELD, dlq_id}
