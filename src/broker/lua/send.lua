-- Append a batch atomically: all messages or none.
-- KEYS: registry, schedule, then per queue i (9 each): stream, dlq, meta,
--       dlq_meta, expiry, delayed, delayed_data, paths, owner
-- ARGV: created_at, nqueues, dedup_window_ms, max registry members (0: no
--       cap), owner set key ('' for none), owner's max queues, owner name,
--       allow colliding paths ('1' or '0'), queue names...,
--       then per message (7 each): queue index, data, ttl_ms | '',
--       delay_ms | '', idempotency key | '', path, ordering key | ''
-- Returns per message: value ('m:<entry id>' or 's:<schedule id>'), duplicate (0/1)
local nq = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local names = 8  -- ARGV[names + i] is queue i's name
local function k(i, j) return KEYS[2 + (i - 1) * 9 + j] end
-- Check every key's type first, so no write can fail half-way through.
-- (In Redis Cluster KEYS[1] and KEYS[2] are the stream: see below.)
if KEYS[1] ~= k(1, 1) then
  local e = want_type(KEYS[1], 'set'); if e then return e end
  e = want_type(KEYS[2], 'zset'); if e then return e end
end
for i = 1, nq do
  local t = redis.call('TYPE', k(i, 1))['ok']
  if t ~= 'none' and t ~= 'stream' then
    return redis.error_reply('WRONGTYPE key ' .. k(i, 1) .. ' holds a ' .. t .. ', not a stream')
  end
  local e = want_type(k(i, 9), 'string'); if e then return e end
end
-- Every path must be its queue's owner, or claim an unowned queue (the
-- batch's first path for it does), before anything is written.
local owner, claim = {}, {}
for j = names + 1 + nq, #ARGV, 7 do
  local qi, path = tonumber(ARGV[j]), ARGV[j + 5]
  if path ~= '' then
    if owner[qi] == nil then
      owner[qi] = redis.call('GET', k(qi, 9)) or path
      claim[qi] = path
    end
    local e = owner_refusal(path, ARGV[names + qi], owner[qi], ARGV[8])
    if e then return e end
  end
end
-- New queues must fit --max-queues and the token's quota, all or none.
local fresh, is_fresh = {}, {}
for i = 1, nq do
  if KEYS[1] ~= k(i, 1) and redis.call('SISMEMBER', KEYS[1], k(i, 1)) == 0 then
    fresh[#fresh + 1] = ARGV[names + i]
    is_fresh[i] = true
  end
end
local e = admit(KEYS[1], fresh, tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7])
if e then return e end
for i = 1, nq do
  if redis.call('EXISTS', k(i, 3)) == 0 or redis.call('EXISTS', k(i, 1)) == 0 then
    e = ensure_queue(k(i, 1), k(i, 2), k(i, 3), k(i, 4), KEYS[1], ARGV[names + i], ARGV[1])
    if e then return e end
  end
  if is_fresh[i] then owned(ARGV[5], ARGV[7], k(i, 3), ARGV[names + i]) end
  if claim[i] then redis.call('SET', k(i, 9), claim[i], 'NX') end
end
local now = now_ms()
local out = {}
local recorded = {}  -- (queue, path) pairs already added to the paths set
local groups = {}    -- queue index -> its groups, read once (for ordering keys)
for j = names + 1 + nq, #ARGV, 7 do
  local qi = tonumber(ARGV[j])
  local data, ttl, delay, dkey, path = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4], ARGV[j + 5]
  local okey = ARGV[j + 6]
  local stream = k(qi, 1)
  local qp = qi .. ' ' .. path
  if not recorded[qp] and path ~= '' then  -- '': addressed by queue name, no path
    redis.call('SADD', k(qi, 8), path)
    recorded[qp] = true
  end
  local dup = false
  if dkey ~= '' then dup = redis.call('GET', stream .. ':dedup:' .. dkey) end
  if dup then
    out[#out + 1] = dup
    out[#out + 1] = 1
  else
    local exp = ''
    if ttl ~= '' then exp = now + tonumber(ttl) end
    local val
    if delay ~= '' then
      local sid = tostring(redis.call('INCR', stream .. ':delayed:seq'))
      local due = now + tonumber(delay)
      redis.call('ZADD', k(qi, 6), due, sid)
      -- A keyed one is marked 'k' (an unkeyed one starts with a digit or
      -- the newline), its key on a line of its own.
      if okey ~= '' then
        redis.call('HSET', k(qi, 7), sid, 'k' .. exp .. '\n' .. okey .. '\n' .. data)
      else
        redis.call('HSET', k(qi, 7), sid, exp .. '\n' .. data)
      end
      -- (In Redis Cluster KEYS[2] is the stream: the caller updates the schedule.)
      if KEYS[2] ~= stream then redis.call('ZADD', KEYS[2], 'LT', due, ARGV[names + qi]) end
      val = 's:' .. sid
    else
      local id
      if okey ~= '' then
        id = redis.call('XADD', stream, '*', 'data', data, ORDERING, okey)
        groups[qi] = groups[qi] or group_names(stream)
        order_register(stream, id, okey, groups[qi])
      else
        id = redis.call('XADD', stream, '*', 'data', data)
      end
      if exp ~= '' then redis.call('ZADD', k(qi, 5), exp / 1000, id) end
      val = 'm:' .. id
    end
    if dkey ~= '' then redis.call('SET', stream .. ':dedup:' .. dkey, val, 'PX', window) end
    out[#out + 1] = val
    out[#out + 1] = 0
  end
end
return out
