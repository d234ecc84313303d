-- Append a queue's due delayed messages to its stream, in due order.
-- KEYS: schedule, stream, delayed, delayed_data, expiry
-- ARGV: queue name, limit
-- Returns {number appended, earliest due left (ms) or -1}. In Redis Cluster
-- KEYS[1] is the stream, and the caller updates the schedule.
if KEYS[1] ~= KEYS[2] then
  local e = want_type(KEYS[1], 'zset'); if e then return e end
end
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local groups = nil  -- the stream's groups, read once if a keyed message is due
for _, sid in ipairs(due) do
  local v = redis.call('HGET', KEYS[4], sid)
  if v then
    local okey = nil
    if string.sub(v, 1, 1) == 'k' then  -- keyed (send.lua): 'k' exp \n key \n data
      local nl = string.find(v, '\n', 1, true)
      local nl2 = string.find(v, '\n', nl + 1, true)
      okey = string.sub(v, nl + 1, nl2 - 1)
      v = string.sub(v, 2, nl) .. string.sub(v, nl2 + 1)
    end
    local nl = string.find(v, '\n', 1, true)
    local exp, data = string.sub(v, 1, nl - 1), string.sub(v, nl + 1)
    local id
    if okey then
      id = redis.call('XADD', KEYS[2], '*', 'data', data, ORDERING, okey)
      groups = groups or group_names(KEYS[2])
      order_register(KEYS[2], id, okey, groups)
    else
      id = redis.call('XADD', KEYS[2], '*', 'data', data)
    end
    if exp ~= '' then redis.call('ZADD', KEYS[5], tonumber(exp) / 1000, id) end
  end
  redis.call('HDEL', KEYS[4], sid)
  redis.call('ZREM', KEYS[3], sid)
end
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local global = KEYS[1] ~= KEYS[2]
if #first > 0 then
  if global then redis.call('ZADD', KEYS[1], first[2], ARGV[1]) end
  return {#due, tonumber(first[2])}
end
if global then redis.call('ZREM', KEYS[1], ARGV[1]) end
return {#due, -1}
