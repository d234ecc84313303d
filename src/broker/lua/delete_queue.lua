-- Delete a queue with its groups, schedules, metadata and registry entry;
-- with WITH_DLQ also its DLQ.
-- KEYS: stream, expiry, delayed, delayed_data, schedule, meta, paths, stats,
--       registry, dlq, dlq_meta, owner
-- ARGV: queue name, with_dlq ('1' or '0')
if KEYS[5] ~= KEYS[1] then
  local e = want_type(KEYS[5], 'zset'); if e then return e end
  e = want_type(KEYS[9], 'set'); if e then return e end
end
local names = group_names(KEYS[1])
local n = 0
if redis.call('EXISTS', KEYS[1]) == 1 then n = redis.call('XLEN', KEYS[1]) end
n = n + redis.call('ZCARD', KEYS[3])
for _, g in ipairs(names) do redis.call('DEL', KEYS[1] .. ':leases:' .. g, KEYS[1] .. ':order:' .. g) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[8], KEYS[12], KEYS[1] .. ':delayed:seq')
local global = KEYS[5] ~= KEYS[1]  -- false in Redis Cluster: the caller does these
if global then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('SREM', KEYS[9], KEYS[1])
end
if ARGV[2] == '1' then
  if redis.call('EXISTS', KEYS[10]) == 1 then n = n + redis.call('XLEN', KEYS[10]) end
  redis.call('DEL', KEYS[10], KEYS[11])
  if global then redis.call('SREM', KEYS[9], KEYS[10]) end
end
return n
