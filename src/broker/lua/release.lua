-- Give back deliveries that never reached a subscriber (it left first):
-- due now, with the delivery uncounted.
-- KEYS: stream, leases
-- ARGV: group, then pairs (id, count)
local now = now_ms()
for i = 2, #ARGV, 2 do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  if holds(KEYS[1], ARGV[1], id, n) == HELD then
    redis.call('XCLAIM', KEYS[1], ARGV[1], RETRY, 0, id, 'JUSTID', 'RETRYCOUNT', n - 1)
    redis.call('ZADD', KEYS[2], now, id)
  end
end
return 1
