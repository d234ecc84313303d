-- KEYS: stream, dlq, meta, dlq_meta, registry, paths, stats, owner
-- ARGV: queue name, created_at, group, start id for a new group, path ('' for none),
--       max groups besides the default one (0: no cap), max registry members
--       (0: no cap), owner set key ('' for none), owner's max queues, owner name,
--       allow colliding paths ('1' or '0')
-- The group is made first, so a new default group gets its start position.
-- Every key's type is checked, and the caps, before the first write.
-- A group beyond the cap is removed again before the script returns, so no
-- one ever sees it; the cap is checked only when a group is new, so the
-- usual call (the group exists) costs no more than before.
local e = want_type(KEYS[1], 'stream'); if e then return e end
e = want_type(KEYS[8], 'string'); if e then return e end
e = owner_refusal(ARGV[5], ARGV[1], redis.call('GET', KEYS[8]), ARGV[11]); if e then return e end
local fresh = {}
if KEYS[5] ~= KEYS[1] then
  e = want_type(KEYS[5], 'set'); if e then return e end
  if redis.call('SISMEMBER', KEYS[5], KEYS[1]) == 0 then fresh = {ARGV[1]} end
end
e = admit(KEYS[5], fresh, tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), ARGV[10])
if e then return e end
local created
e, created = mkgroup_new(KEYS[1], ARGV[3], ARGV[4]); if e then return e end
e = ensure_queue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2])
if e then return e end
if #fresh > 0 then owned(ARGV[8], ARGV[10], KEYS[3], ARGV[1]) end
if created then
  local default, cap = ARGV[1] .. '-group', tonumber(ARGV[6])
  if ARGV[3] ~= default and cap > 0 and #redis.call('XINFO', 'GROUPS', KEYS[1]) - 1 > cap then
    redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[3])
    return redis.error_reply(string.format(
      'QUOTA queue %s has %d groups besides its default group (--max-groups-per-queue); group %s was not created',
      ARGV[1], cap, ARGV[3]))
  end
  -- Its consumer from now, so an idle group's age counts from its creation.
  redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], ARGV[3], HOLDER)
  redis.call('HINCRBY', KEYS[7], 'groups_created', 1)
end
if ARGV[5] ~= '' then
  redis.call('SADD', KEYS[6], ARGV[5])
  redis.call('SET', KEYS[8], ARGV[5], 'NX')
end
return 1
