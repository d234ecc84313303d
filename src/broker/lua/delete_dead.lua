-- KEYS: dlq   ARGV: dlq group, ids...   Returns how many were deleted.
local n = 0
for i = 2, #ARGV do
  redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[i])
  n = n + redis.call('XDEL', KEYS[1], ARGV[i])
end
return n
