-- Lease entries a reader has just taken with a plain XREADGROUP (the fast
-- fetch, see Broker::fetch_new), so that their data never passes through
-- Lua. Entries whose TTL has passed are parked for dead-lettering instead,
-- as fetch.lua parks them.
-- KEYS: stream, leases, expiry, stats
-- ARGV: group, lease_ms, hold_ms, then the ids taken
-- Returns {now, ids parked}.
local stream, leases = KEYS[1], KEYS[2]
local group = ARGV[1]
local lease_ms, hold_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local has_expiry = redis.call('EXISTS', KEYS[3]) == 1
local z, parked = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local at = has_expiry and redis.call('ZSCORE', KEYS[3], id)
  if at and tonumber(at) * 1000 <= now then
    park(stream, group, leases, KEYS[4], id, now, hold_ms, 'expired')
    parked[#parked + 1] = id
  else
    z[#z + 1] = now + lease_ms
    z[#z + 1] = id
  end
end
if #z > 0 then redis.call('ZADD', leases, unpack(z)) end
return {now, parked}
