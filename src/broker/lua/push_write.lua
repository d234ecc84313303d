-- Write a push subscription's hash, atomically with its index.
-- KEYS[1] the index set, KEYS[2] the subscription's hash.
-- ARGV[1] mode: "create" (refused when it exists or the index is full),
-- "update" (HSET, only when it exists) or "incr" (HINCRBY, only when it
-- exists, so a counter never resurrects a deleted subscription);
-- ARGV[2] its name; ARGV[3] most subscriptions; ARGV[4..] field, value pairs.
-- Returns 1 when written, 0 when absent (or, for create, present), -1 when full.
local exists = redis.call('EXISTS', KEYS[2]) == 1
local mode = ARGV[1]
if mode == 'create' then
  if exists then return 0 end
  if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
  redis.call('SADD', KEYS[1], ARGV[2])
elseif not exists then
  return 0
end
for i = 4, #ARGV, 2 do
  if mode == 'incr' then
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 1
