-- KEYS: stream, leases
-- ARGV: group, then triples (id, count, the ordering key when the receipt
--       names it, else '': read from the entry if need be)
-- Returns one code per pair: HELD (now acked), NOT_PENDING or STALE, then
-- 1 when an ordering key's next entry fell due (see order_settle), else 0.
-- Checks each receipt (against the attempt its lease's score vouches for,
-- see lease_score, else against XPENDING), then acks and drops the leases of
-- all that hold theirs with one XACK and one ZREM.
local stream, leases, group = KEYS[1], KEYS[2], ARGV[1]
local ids, tags = {}, {}
for i = 2, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
  tags[ARGV[i]] = ARGV[i + 2]
end
local scores = redis.call('ZMSCORE', leases, unpack(ids))
local res, ok = {}, {}
for j, id in ipairs(ids) do
  local count = tonumber(ARGV[3 * j])
  local attempt = vouched(scores[j])
  local h
  if attempt then
    h = attempt == count and HELD or STALE
  else
    h = holds(stream, group, id, count)
  end
  if h == HELD then ok[#ok + 1] = id end
  res[#res + 1] = h
end
if #ok > 0 then
  redis.call('XACK', stream, group, unpack(ok))
  redis.call('ZREM', leases, unpack(ok))
end
res[#res + 1] = order_settle_ids(stream, group, leases, ok, tags) and 1 or 0
return res
