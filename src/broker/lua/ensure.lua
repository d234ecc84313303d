-- KEYS: stream, dlq, meta, dlq_meta, registry, paths
-- ARGV: queue name, created_at, group, start id for a new group, path ('' for none)
-- The group is made first, so a new default group gets its start position.
local e = want_type(KEYS[1], 'stream'); if e then return e end
if KEYS[5] ~= KEYS[1] then
  e = want_type(KEYS[5], 'set'); if e then return e end
end
e = mkgroup(KEYS[1], ARGV[3], ARGV[4]); if e then return e end
e = ensure_queue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2])
if e then return e end
if ARGV[5] ~= '' then redis.call('SADD', KEYS[6], ARGV[5]) end
return 1
