-- Append a batch atomically: all messages or none.
-- KEYS: registry, then per queue i: stream, dlq, meta, dlq_meta
-- ARGV: created_at, nqueues, queue names..., then pairs (queue index, data)
local nq = tonumber(ARGV[2])
local function k(i, j) return KEYS[1 + (i - 1) * 4 + j] end
-- Check every key's type first, so no XADD can fail half-way through.
for i = 1, nq do
  local t = redis.call('TYPE', k(i, 1))['ok']
  if t ~= 'none' and t ~= 'stream' then
    return redis.error_reply('WRONGTYPE key ' .. k(i, 1) .. ' holds a ' .. t .. ', not a stream')
  end
end
for i = 1, nq do
  if redis.call('EXISTS', k(i, 3)) == 0 or redis.call('EXISTS', k(i, 1)) == 0 then
    local e = ensure_queue(k(i, 1), k(i, 2), k(i, 3), k(i, 4), KEYS[1], ARGV[2 + i], ARGV[1])
    if e then return e end
  end
end
local ids = {}
for j = 3 + nq, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', k(tonumber(ARGV[j]), 1), '*', 'data', ARGV[j + 1])
end
return ids
