-- KEYS: stream, leases
-- ARGV: group, then pairs (id, count)
-- Returns one code per pair: 1 acked, 2 not pending, 3 stale.
-- Checks each receipt, then acks and drops the leases of all that hold
-- theirs with one XACK and one ZREM.
local res, ok = {}, {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local h = holds(KEYS[1], ARGV[1], id, tonumber(ARGV[i + 1]))
  if h == 1 then ok[#ok + 1] = id end
  res[#res + 1] = h
end
if #ok > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ok))
  redis.call('ZREM', KEYS[2], unpack(ok))
end
return res
