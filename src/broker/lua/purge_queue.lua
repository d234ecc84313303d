-- Delete every message and schedule of a queue; its groups stay, at the new end.
-- KEYS: stream, expiry, delayed, delayed_data, schedule   ARGV: queue name
if KEYS[5] ~= KEYS[1] then
  local e = want_type(KEYS[5], 'zset'); if e then return e end
end
local names = group_names(KEYS[1])
local n = 0
if redis.call('EXISTS', KEYS[1]) == 1 then n = redis.call('XLEN', KEYS[1]) end
n = n + redis.call('ZCARD', KEYS[3])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
if KEYS[5] ~= KEYS[1] then redis.call('ZREM', KEYS[5], ARGV[1]) end
for _, g in ipairs(names) do
  redis.call('DEL', KEYS[1] .. ':leases:' .. g, KEYS[1] .. ':order:' .. g)
  local e = mkgroup(KEYS[1], g); if e then return e end
end
return n
