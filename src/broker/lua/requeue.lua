-- Move one dead letter back to its queue: append the copy, ack it in the
-- DLQ's group (no ghost pending entry) and delete it, in one step.
-- KEYS: dlq, stream   ARGV: dlq group, dlq entry id, data
-- Returns the new entry id, or '' when the dead letter is gone. A keyed
-- dead letter rejoins its ordering key, at the key's end.
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e == 0 then return '' end
local key = field(e[1][2], ORDERING)
local id
if key then
  id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[3], ORDERING, key)
  order_register(KEYS[2], id, key, group_names(KEYS[2]))
else
  id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[3])
end
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
