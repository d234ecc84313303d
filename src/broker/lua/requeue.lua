-- Move one dead letter back to its queue: append the copy, ack it in the
-- DLQ's group (no ghost pending entry) and delete it, in one step.
-- KEYS: dlq, stream   ARGV: dlq group, dlq entry id, data
-- Returns the new entry id, or '' when the dead letter is gone.
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then return '' end
local id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[3])
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
