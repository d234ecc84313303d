-- KEYS: stream, leases
-- ARGV: group, then pairs (id, count)
-- Returns one code per pair: 1 acked, 2 not pending, 3 stale.
local res = {}
for i = 2, #ARGV, 2 do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local h = holds(KEYS[1], ARGV[1], id, n)
  if h == 1 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
  res[#res + 1] = h
end
return res
