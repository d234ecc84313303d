-- Destroy a group that is idle and empty: nothing pending, and every one of
-- its consumers idle for IDLE_MS (a group without consumers is never
-- judged idle); never the queue's LeanMQ group. Checked again here, so a
-- group that was used since the sweep looked is kept.
-- KEYS: stream   ARGV: group, idle_ms, default group
-- Returns 1 when destroyed, else 0.
local group = ARGV[1]
if group == ARGV[3] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local p = redis.pcall('XPENDING', KEYS[1], group)
if type(p) ~= 'table' or p.err or tonumber(p[1]) > 0 then return 0 end
local cs = redis.call('XINFO', 'CONSUMERS', KEYS[1], group)
if #cs == 0 then return 0 end
for _, c in ipairs(cs) do
  for i = 1, #c, 2 do
    if c[i] == 'idle' and tonumber(c[i + 1]) < tonumber(ARGV[2]) then return 0 end
  end
end
redis.call('XGROUP', 'DESTROY', KEYS[1], group)
redis.call('DEL', KEYS[1] .. ':leases:' .. group, KEYS[1] .. ':order:' .. group)
return 1
