-- Lease entries a reader has just taken with a plain XREADGROUP (the fast
-- fetch, see Broker::fetch_new), so that their data never passes through
-- Lua. Entries whose TTL has passed are parked for dead-lettering instead,
-- as fetch.lua parks them (both through `lease_new`), and keyed entries
-- whose key is not theirs to deliver yet wait for it.
-- KEYS: stream, leases, expiry, stats
-- ARGV: group, lease_ms, hold_ms, then per entry taken: id, ordering key ('' for none)
-- Returns {now, ids parked, ids waiting}.
local ids, keys = {}, {}
for i = 4, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  keys[ARGV[i]] = ARGV[i + 1]
end
local now = now_ms()
local parked, waiting = lease_new(KEYS[1], ARGV[1], KEYS[2], KEYS[3], KEYS[4], ids, now,
  tonumber(ARGV[2]), tonumber(ARGV[3]), redis.call('EXISTS', KEYS[3]) == 1, keys)
local list, wait = {}, {}
for _, id in ipairs(ids) do
  if parked[id] then list[#list + 1] = id end
  if waiting[id] then wait[#wait + 1] = id end
end
if #wait < #ids then skiplist(KEYS[2]) end
return {now, list, wait}
