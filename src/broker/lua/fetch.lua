-- Take up to COUNT deliveries for a group: first entries whose lease or
-- retry time is due (and orphans), then up to NEW_MAX new entries. Each
-- delivered entry is leased until now + LEASE_MS. Entries that used their
-- last attempt, or whose TTL has passed, are handed back for
-- dead-lettering instead. Keyed entries woken for their turn (order_wake)
-- are claimed all at once, without asking XPENDING about each.
-- KEYS: stream, leases, expiry, stats
-- ARGV: group, count, lease_ms, max_attempts, orphan_idle_ms (0: no scan), hold_ms,
--       unleased_idle_ms (0: no scan), unleased_from (an entry id or '-'), new_max
-- Returns {now, deliveries, parked, next due time or -1, last id, unleased_next,
--          new entries asked for, read, and how many of those wait for their key's turn}
local stream, leases = KEYS[1], KEYS[2]
local group = ARGV[1]
local count = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local max_attempts = tonumber(ARGV[4])
local orphan_ms = tonumber(ARGV[5])
local hold_ms = tonumber(ARGV[6])
local unleased_ms = tonumber(ARGV[7])
local now = now_ms()
local has_expiry = redis.call('EXISTS', KEYS[3]) == 1
-- The group has keyed entries it has not settled (see order_turn).
local has_order = redis.call('EXISTS', stream .. ':order:' .. group) == 1

local function expired(id)
  return has_expiry and past_ttl(KEYS[3], id, now)
end

local out, dead = {}, {}
-- Park an entry for a replica to dead-letter, uncounted as a delivery.
local function to_dead(id, n, fields, why)
  park(stream, group, leases, KEYS[4], id, now, hold_ms, why)
  dead[#dead + 1] = {id, n, fields, why}
end

-- Keyed entries waiting for their turn whose wake-up was missed (their
-- head was settled behind leanmqd's back): looked at on the same rounds as
-- unleased entries, 100 at a time; those whose turn it is fall due now.
if has_order and unleased_ms > 0 then
  local waiting, turn = redis.call('XPENDING', stream, group, 'IDLE', unleased_ms, '-', '+', 100, ORDER_WAIT), {}
  for _, p in ipairs(waiting) do
    local key = entry_key(stream, p[1])
    if key == '' or order_turn(stream, group, leases, p[1], key, true) then
      turn[#turn + 1] = {p[1], tonumber(p[4])}
    end
  end
  order_wake(leases, turn)
end
-- Due leases, retries and woken entries. Woken ones (woken_count) that
-- may have another attempt are claimed below by deliveries had; the
-- others join DUE. Those are leased, retrying or woken: a keyed one among
-- them heads its key (only a head is ever leased or woken), so its turn is
-- not asked again; orphans and unleased entries added below are.
local due, woken, nwoken = {}, {}, 0
local scored = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'WITHSCORES', 'LIMIT', 0, count)
for i = 1, #scored, 2 do
  local id, n = scored[i], woken_count(scored[i + 1])
  if n and n < max_attempts and not expired(id) then
    if not woken[n] then woken[n] = {} end
    table.insert(woken[n], id)
    nwoken = nwoken + 1
  else
    due[#due + 1] = id
  end
end
local from_leases = #due
-- Room left for the other due entries, orphans and unleased ones.
local room = count - nwoken
local picked = {}
-- Pending entries idle this long without a lease are taken as if due.
local function orphans(idle_ms)
  if idle_ms <= 0 or #due >= room then return end
  local idle = redis.call('XPENDING', stream, group, 'IDLE', idle_ms, '-', '+', 100)
  for _, p in ipairs(idle) do
    if #due >= room then break end
    if not picked[p[1]] and p[2] ~= ORDER_WAIT and redis.call('ZSCORE', leases, p[1]) == false then
      picked[p[1]] = true
      due[#due + 1] = p[1]
    end
  end
end
-- Ours without a lease: a reader read them (Broker::fetch_new) but never
-- leased them (it or Redis died in between); after UNLEASED_MS no live
-- reader can still be about to. 100 entries per round, from UNLEASED_FROM
-- on, so that a long list of leased entries can't hide one for ever; the
-- round returns where the next one goes on ('-': from the start).
local unleased_next = ARGV[8]
if unleased_ms > 0 and #due < room then
  local from = ARGV[8]
  if from ~= '-' then from = '(' .. from end
  local idle = redis.call('XPENDING', stream, group, 'IDLE', unleased_ms, from, '+', 100, HOLDER)
  for _, p in ipairs(idle) do
    if #due >= room then break end
    unleased_next = p[1]
    if not picked[p[1]] and redis.call('ZSCORE', leases, p[1]) == false then
      picked[p[1]] = true
      due[#due + 1] = p[1]
    end
  end
  if #idle < 100 and #due < room then unleased_next = '-' end
end
-- Anyone's, such as a crashed LeanMQ Python worker's.
orphans(orphan_ms)
-- The leases of due entries delivered, added with one ZADD after the loop.
local lz = {}
for i, id in ipairs(due) do
  local consumer, n = pending(stream, group, id)
  if consumer == nil then
    redis.call('ZREM', leases, id) -- settled elsewhere
    if has_order then order_settle(stream, group, leases, {id}, {entry_key(stream, id)}) end
  else
    local exhausted = n >= max_attempts
    if exhausted or expired(id) then
      local e = redis.call('XRANGE', stream, id, id)
      if #e == 0 then
        redis.call('XACK', stream, group, id)
        redis.call('ZREM', leases, id)
      elseif consumer == DLQ_HOLD then
        -- already parked: a replica died before moving it; hand it out again
        redis.call('ZADD', leases, now + hold_ms, id)
        dead[#dead + 1] = {id, n, e[1][2], exhausted and 'exhausted' or 'expired'}
      else
        to_dead(id, n, e[1][2], exhausted and 'exhausted' or 'expired')
      end
    else
      local c = redis.call('XCLAIM', stream, group, HOLDER, 0, id)
      if #c == 0 or not c[1] then
        redis.call('XACK', stream, group, id) -- entry deleted under us
        redis.call('ZREM', leases, id)
      else
        local key = has_order and i > from_leases and field(c[1][2], ORDERING) or nil
        if key and not order_turn(stream, group, leases, id, key, true) then
          order_park(stream, group, leases, {id}, n, true)
        else
          lz[#lz + 1] = lease_score(now + lease_ms, n + 1)
          lz[#lz + 1] = id
          out[#out + 1] = {id, n + 1, c[1][2]}
        end
      end
    end
  end
end
-- Woken entries, one XCLAIM per count of deliveries had (almost always
-- one in all); those it does not return are no longer pending (settled
-- behind our back, or deleted).
local gone = {}
for n, ids in pairs(woken) do
  local args = {stream, group, HOLDER, 0}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  args[#args + 1] = 'RETRYCOUNT'
  args[#args + 1] = n + 1
  local held, deadline = {}, lease_score(now + lease_ms, n + 1)
  for _, id in ipairs(redis.call('XCLAIM', unpack(args))) do
    held[id] = true
    lz[#lz + 1] = deadline
    lz[#lz + 1] = id
    local e = redis.call('XRANGE', stream, id, id)
    if #e > 0 then
      out[#out + 1] = {id, n + 1, e[1][2]}
    else
      gone[#gone + 1] = id
    end
  end
  for _, id in ipairs(ids) do
    if not held[id] then
      redis.call('ZREM', leases, id)
      order_settle(stream, group, leases, {id}, {entry_key(stream, id)})
    end
  end
end
if #lz > 0 then redis.call('ZADD', leases, unpack(lz)) end
-- Claimed, then deleted under us (XCLAIM keeps deleted entries' ids).
if #gone > 0 then
  redis.call('XACK', stream, group, unpack(gone))
  redis.call('ZREM', leases, unpack(gone))
end
local want = math.min(count - #out, tonumber(ARGV[9]))
local read, waited = 0, 0
if want > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', group, HOLDER, 'COUNT', want, 'STREAMS', stream, '>')
  if r then
    local entries, ids, keys = r[1][2], {}, nil
    read = #entries
    if has_order then keys = {} end
    for i, e in ipairs(entries) do
      ids[i] = e[1]
      if keys then keys[e[1]] = field(e[2], ORDERING) or '' end
    end
    local parked, waiting = lease_new(stream, group, leases, KEYS[3], KEYS[4], ids, now, lease_ms, hold_ms, has_expiry, keys)
    for _, e in ipairs(entries) do
      if parked[e[1]] then
        dead[#dead + 1] = {e[1], 1, e[2], 'expired'}
      elseif waiting[e[1]] then
        waited = waited + 1 -- waits for its key's turn
      else
        out[#out + 1] = {e[1], 1, e[2]}
      end
    end
  end
end
if #out > 0 or #dead > 0 then skiplist(leases) end
local next_due = -1
local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
if #first > 0 then next_due = math.max(math.floor(tonumber(first[2])), now) end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
return {now, out, dead, next_due, last_id, unleased_next, math.max(want, 0), read, waited}
