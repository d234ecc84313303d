-- KEYS: dlq   ARGV: dlq group   Returns how many were purged.
-- A DLQ that does not exist stays so: recreating its group (MKSTREAM) would
-- leave a stream no registry entry knows.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
local e = mkgroup(KEYS[1], ARGV[1]); if e then return e end
return n
