-- KEYS: stream, dlq, meta, dlq_meta, registry
-- ARGV: queue name, created_at, extra group ('' for none)
local e = ensure_queue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2])
if e then return e end
if ARGV[3] ~= '' then
  e = mkgroup(KEYS[1], ARGV[3]); if e then return e end
end
return 1
