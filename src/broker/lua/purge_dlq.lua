-- KEYS: dlq   ARGV: dlq group   Returns how many were purged.
local n = 0
if redis.call('EXISTS', KEYS[1]) == 1 then n = redis.call('XLEN', KEYS[1]) end
redis.call('DEL', KEYS[1])
local e = mkgroup(KEYS[1], ARGV[1]); if e then return e end
return n
