-- Trim what every group has acked and nobody holds pending, once older
-- than MAX_AGE_MS; never an undelivered or pending entry. Then, only when
-- the opt-in MAX_LEN is set, cap the length (this may drop unread entries;
-- they are counted in stats.dropped).
-- KEYS: stream, stats   ARGV: max_age_ms, max_len (0: none)
-- Returns {trimmed, dropped}
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local now = now_ms()
local trimmed, dropped = 0, 0
local groups = group_names(KEYS[1])
if #groups > 0 then
  local threshold = nil
  for _, g in ipairs(groups) do
    local last = '0-0'
    for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local name, ld
      for i = 1, #info, 2 do
        if info[i] == 'name' then name = info[i + 1] elseif info[i] == 'last-delivered-id' then ld = info[i + 1] end
      end
      if name == g then last = ld end
    end
    local m, s = parse_id(last)
    local t = string.format('%d-%d', m, s + 1)
    local p = redis.call('XPENDING', KEYS[1], g)
    if p[1] > 0 and id_lt(p[2], t) then t = p[2] end
    if threshold == nil or id_lt(t, threshold) then threshold = t end
  end
  local cutoff = string.format('%d-0', math.max(0, now - tonumber(ARGV[1])))
  if id_lt(cutoff, threshold) then threshold = cutoff end
  trimmed = redis.call('XTRIM', KEYS[1], 'MINID', threshold)
end
local max_len = tonumber(ARGV[2])
if max_len > 0 then
  dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', max_len)
  if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dropped', dropped) end
end
return {trimmed, dropped}
