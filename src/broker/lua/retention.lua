-- The last step of a retention pass (see broker/retention.rs, which reads
-- the groups with plain commands, so no script walks them): trim below
-- THRESHOLD, the lowest id some group still needs, once older than
-- MAX_AGE_MS; never an undelivered or pending entry. Then, only when the
-- opt-in MAX_LEN is set, cap the length (this may drop unread entries;
-- they are counted in stats.dropped).
-- The groups were read before this call. A group made since, perhaps at
-- an old start, is not in THRESHOLD, so ensure.lua counts the groups it
-- makes (stats.groups_created): when that count is no longer GENERATION,
-- nothing is trimmed (the next sweep tries again).
-- KEYS: stream, stats
-- ARGV: max_age_ms, max_len (0: none), threshold ('' when no group), generation
-- Returns {trimmed, dropped}; trimmed is -1 when the groups changed.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
if (redis.call('HGET', KEYS[2], 'groups_created') or '0') ~= ARGV[4] then return {-1, 0} end
local trimmed, dropped = 0, 0
local threshold = ARGV[3]
if threshold ~= '' then
  local cutoff = string.format('%d-0', math.max(0, now_ms() - tonumber(ARGV[1])))
  if id_lt(cutoff, threshold) then threshold = cutoff end
  trimmed = redis.call('XTRIM', KEYS[1], 'MINID', threshold)
end
local max_len = tonumber(ARGV[2])
if max_len > 0 then
  dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', max_len)
  if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dropped', dropped) end
end
return {trimmed, dropped}
