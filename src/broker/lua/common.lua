-- Shared helpers, prepended to every script.
-- The holder consumer names (HOLDER, RETRY, DLQ_HOLD) and the result codes
-- (HELD, NOT_PENDING, STALE) come before this file, from the constants in
-- broker/scripts (one definition for Rust and Lua). A delivery is valid only
-- while its entry is pending under HOLDER with the count its receipt carries.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An error when KEY exists with a type other than WANT. A script's writes are
-- not undone by a later error, so scripts check every key they write before
-- their first write: a key another program wrote then fails the call whole.
local function want_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
  end
  return nil
end

-- Create a group at START (default '$', with MKSTREAM); an existing group is fine.
local function mkgroup(key, group, start)
  local r = redis.pcall('XGROUP', 'CREATE', key, group, start or '$', 'MKSTREAM')
  if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(r.err)
  end
  return nil
end

-- The queue pair, LeanMQ's groups, metadata and registry, as LeanMQ's
-- create_queue_pair writes them (but keeping the first created_at).
-- In Redis Cluster the registry lives in another slot: the caller passes
-- the stream key in its place and records the queue itself.
local function ensure_queue(stream, dlq, meta, dlq_meta, registry, qname, created_at)
  local group = qname .. '-group'
  local e = mkgroup(stream, group); if e then return e end
  e = mkgroup(dlq, group .. '-dlq'); if e then return e end
  if registry ~= stream then redis.call('SADD', registry, stream, dlq) end
  redis.call('HSETNX', meta, 'created_at', created_at)
  redis.call('HSET', meta, 'dlq', dlq, 'consumer_group', group)
  redis.call('HSETNX', dlq_meta, 'created_at', created_at)
  redis.call('HSET', dlq_meta, 'main_queue', stream, 'consumer_group', group .. '-dlq', 'is_dlq', 'true')
  return nil
end

-- {consumer, count} of a pending entry, or nil.
-- A missing stream or group (a forged receipt, a deleted queue) counts as
-- not pending rather than an error.
local function pending(stream, group, id)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(p) ~= 'table' or p.err or #p == 0 then return nil end
  return p[1][2], tonumber(p[1][4])
end

-- HELD when the receipt (id, count) still holds the lease; else NOT_PENDING
-- when the entry is not pending, STALE when it is pending under another delivery.
local function holds(stream, group, id, count)
  local consumer, n = pending(stream, group, id)
  if consumer == nil then return NOT_PENDING end
  if consumer ~= HOLDER or n ~= count then return STALE end
  return HELD
end

-- A lease's score in {stream}:leases:{group} is its deadline in ms. While
-- leanmqd's consumer holds the delivery, the score's fraction also names the
-- attempt: deadline + attempt/1024 (exact in a double until the year 2248).
-- An ack then checks a batch of receipts with one ZMSCORE instead of one
-- XPENDING each (~3 us of Redis per receipt). Every other change to a
-- delivery (a retry, release or park, and any change an older leanmqd makes)
-- writes a whole-ms score, which vouches for nothing, and an ack removes the
-- lease: a receipt without a vouching score is checked against XPENDING.
local function lease_score(deadline, attempt)
  if attempt < 1 or attempt > 1023 then return string.format('%d', deadline) end
  return string.format('%.10f', deadline + attempt / 1024)
end

-- Keep a lease set in Redis' skiplist encoding. Below 128 members Redis
-- packs a sorted set in a listpack, where every ZADD, ZMSCORE and
-- ZRANGEBYSCORE scans the members and parses their scores from text; with
-- the fractional scores of lease_score that is 16-33 us per ZADD at 120
-- members against 3-4 us in a skiplist (measured on Redis 7.0). Ordered
-- delivery with ~100 keys keeps ~100 leases, right in that range. A member
-- longer than zset-max-listpack-value converts the set, which stays a
-- skiplist (Redis never converts back) until it is emptied and deleted.
local function skiplist(leases)
  local enc = redis.call('OBJECT', 'ENCODING', leases)
  if enc == 'listpack' or enc == 'ziplist' then
    local big = string.rep('~', 1024)
    redis.call('ZADD', leases, 0, big)
    redis.call('ZREM', leases, big)
  end
end

-- The attempt a lease score (or false) vouches for; nil for none.
local function vouched(score)
  if not score then return nil end
  local s = tonumber(score)
  local a = math.floor((s - math.floor(s)) * 1024 + 0.5)
  if a == 0 then return nil end
  return a
end

-- Park a pending entry for a replica to dead-letter (held by DLQ_HOLD
-- until now + HOLD_MS), uncounted as a delivery; an expired one is counted
-- in the queue's stats.
local function park(stream, group, leases, stats, id, now, hold_ms, why)
  redis.call('XCLAIM', stream, group, DLQ_HOLD, 0, id, 'JUSTID')
  redis.call('ZADD', leases, now + hold_ms, id)
  if why == 'expired' then redis.call('HINCRBY', stats, 'expired', 1) end
end

-- True when ID's TTL (its score in EXPIRY, in seconds) has passed at NOW (ms).
local function past_ttl(expiry, id, now)
  local at = redis.call('ZSCORE', expiry, id)
  return at and tonumber(at) * 1000 <= now
end

-- Stream ids: parse and compare.
local function parse_id(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function id_lt(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am < bm or (am == bm and as < bs)
end

-- Names of a stream's consumer groups.
local function group_names(stream)
  local names = {}
  if redis.call('EXISTS', stream) == 0 then return names end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    for i = 1, #g, 2 do
      if g[i] == 'name' then names[#names + 1] = g[i + 1] end
    end
  end
  return names
end

-- Limits on what a tenant can make. QUOTA errors become RESOURCE_EXHAUSTED.

-- Create a group like mkgroup; returns (error reply or nil, true when new).
local function mkgroup_new(key, group, start)
  local r = redis.pcall('XGROUP', 'CREATE', key, group, start or '$', 'MKSTREAM')
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'BUSYGROUP', 1, true) then return nil, false end
    return redis.error_reply(r.err), false
  end
  return nil, true
end

-- May these NEW queues (stream keys not yet in REGISTRY) be created? Refused
-- as a whole, before anything is written, when the registry would pass
-- MAX_REGISTRY members (two per queue: it and its DLQ; 0: no cap), or the
-- creating token's set of queues OWNER_KEY ('' for none) would pass
-- OWNER_MAX. In Redis Cluster (REGISTRY is then the stream) the caller checks.
local function admit(registry, fresh, max_registry, owner_key, owner_max, owner)
  if #fresh == 0 then return nil end
  if owner_key ~= '' then
    local e = want_type(owner_key, 'set'); if e then return e end
  end
  if max_registry > 0 and redis.call('SCARD', registry) + 2 * #fresh > max_registry then
    return redis.error_reply(string.format(
      'QUOTA leanmqd holds at most %d queues (--max-queues); refused to create %s',
      max_registry / 2, table.concat(fresh, ', ')))
  end
  if owner_key ~= '' and redis.call('SCARD', owner_key) + #fresh > owner_max then
    return redis.error_reply(string.format(
      'QUOTA token %q may create at most %d queues (max_queues in the tokens file) and has created %d; refused to create %s',
      owner, owner_max, redis.call('SCARD', owner_key), table.concat(fresh, ', ')))
  end
  return nil
end

-- Record that OWNER created queue QNAME (META: its metadata hash).
local function owned(owner_key, owner, meta, qname)
  if owner_key == '' then return end
  redis.call('SADD', owner_key, qname)
  redis.call('HSET', meta, 'created_by', owner)
end

-- A queue belongs to the first path that made it ({q}:owner, issue #14
-- finding 10): another spelling of the same queue name is refused, unless
-- leanmqd runs with --allow-colliding-paths (ALLOW = '1').
local function owner_refusal(path, queue, owner, allow)
  if path == '' or not owner or owner == path or allow == '1' then return nil end
  return redis.error_reply('OWNED path "' .. path .. '" maps to queue "' .. queue ..
    '", which belongs to "' .. owner .. '"; use that path (or start leanmqd with --allow-colliding-paths)')
end

-- Ordering keys (issue #19). A message sent with an ordering key carries it
-- in its stream entry's ORDERING field, and is registered, when appended,
-- with every group of the stream: {stream}:order:{group} is a sorted set
-- of "key\0<padded id>" members (all scored 0, so ordered by key, then by
-- id), one per keyed entry the group has not settled. A key's head is its
-- first member, and only the head is ever delivered; the others, once
-- read, wait pending under ORDER_WAIT with no lease until the head is
-- acked or dead-lettered (order_settle), which makes the next one due.
-- Groups made after a message was appended never read it unless made at
-- an earlier start; such entries are not registered and go unordered.
-- (ORDERING and ORDER_WAIT come from the preamble.)

-- A stream id with both parts zero-padded, so that text order is id order.
local function pad(id)
  local d = string.find(id, '-', 1, true)
  local ms, seq = string.sub(id, 1, d - 1), string.sub(id, d + 1)
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end

-- The stream id of a member (its text after the key's NUL).
local function member_id(m)
  local nul = string.find(m, '\0', 1, true)
  local ms, seq = string.match(string.sub(m, nul + 1), '^0*(%d-)-0*(%d-)$')
  if ms == '' then ms = '0' end
  if seq == '' then seq = '0' end
  return ms .. '-' .. seq
end

-- The value of field NAME in an entry's field list, or nil.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- The ordering key of entry ID, read from the stream ('' when none or gone).
local function entry_key(stream, id)
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 0 then return '' end
  return field(e[1][2], ORDERING) or ''
end

-- Register a keyed entry just appended with each of GROUPS (group_names).
local function order_register(stream, id, key, groups)
  local m = key .. '\0' .. pad(id)
  for _, g in ipairs(groups) do
    redis.call('ZADD', stream .. ':order:' .. g, 0, m)
  end
end

-- The earliest unsettled member of KEY in ordering set Z, or nil.
local function order_first(z, key)
  local r = redis.call('ZRANGE', z, '[' .. key .. '\0', '(' .. key .. '\1', 'BYLEX', 'LIMIT', 0, 1)
  return r[1]
end

-- Make waiting entries due now, with one ZADD: WOKEN lists {id, n}, n the
-- deliveries each had (order_park). They stay pending under ORDER_WAIT
-- until a fetch finds them due and claims them (the claim counts the next
-- one). A woken entry's lease score is -(n + 1): below every deadline, so
-- due at once and first, and a whole number, so it vouches for no attempt
-- (see lease_score); fetch.lua reads n back from it (woken_count) instead
-- of asking XPENDING, and claims all woken entries with one XCLAIM.
local function order_wake(leases, woken)
  if #woken == 0 then return end
  local z = {}
  for _, w in ipairs(woken) do
    z[#z + 1] = string.format('%d', -(w[2] + 1))
    z[#z + 1] = w[1]
  end
  redis.call('ZADD', leases, unpack(z))
end

-- The deliveries a woken entry had, from its lease SCORE; nil for any
-- other lease (a deadline or a retry time is never negative).
local function woken_count(score)
  local s = tonumber(score)
  if s >= 0 then return nil end
  return -s - 1
end

-- Park entries IDS, N deliveries made (0 for entries just read), to wait
-- for their key's turn, with one XCLAIM; LEASED: they may hold a lease or
-- retry time to drop (never so for new entries).
local function order_park(stream, group, leases, ids, n, leased)
  if #ids == 0 then return end
  local args = {stream, group, ORDER_WAIT, 0}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  args[#args + 1] = 'RETRYCOUNT'
  args[#args + 1] = n
  redis.call('XCLAIM', unpack(args))
  if leased then redis.call('ZREM', leases, unpack(ids)) end
end

-- Is it entry ID's (ordering key KEY) turn in GROUP? True when it heads
-- its key, or is not registered (unordered for this group). Only an
-- earlier member of the key can head it: an entry ahead of the first
-- member is not registered. An entry behind it waits, unless VERIFY: then
-- (as the repair round in fetch.lua asks, off the hot path) it is first
-- checked to be registered at all, and a head no longer pending though a
-- later entry was read (settled behind our back: a LeanMQ consumer's XACK,
-- a deleted or trimmed entry) is dropped; a head waiting under ORDER_WAIT
-- (its wake-up was missed) is woken.
local function order_turn(stream, group, leases, id, key, verify)
  local z = stream .. ':order:' .. group
  local mine = key .. '\0' .. pad(id)
  if verify and not redis.call('ZSCORE', z, mine) then return true end
  for _ = 1, 32 do
    local first = order_first(z, key)
    if first == nil or first == mine then return true end
    local h = member_id(first)
    if id_lt(id, h) then return true end
    if not verify then return false end
    local consumer, n = pending(stream, group, h)
    if consumer == nil then
      redis.call('ZREM', z, first)
    else
      if consumer == ORDER_WAIT then order_wake(leases, {{h, n}}) end
      return false
    end
  end
  return false
end

-- Entries IDS (KEYS[i]: the ordering key of IDS[i], '' for none) left
-- GROUP's pending list (acked or dead-lettered): each key's next entry, if
-- read and waiting, falls due. One ZREM and one ZADD for all; returns true
-- when any fell due.
local function order_settle(stream, group, leases, ids, keys)
  local z, gone, heads = stream .. ':order:' .. group, {}, {}
  for i, id in ipairs(ids) do
    if keys[i] ~= '' then gone[#gone + 1] = keys[i] .. '\0' .. pad(id) end
  end
  if #gone == 0 then return false end
  redis.call('ZREM', z, unpack(gone))
  local asked = {}
  for _, key in ipairs(keys) do
    if key ~= '' and not asked[key] then
      asked[key] = true
      local first = order_first(z, key)
      if first ~= nil then
        local h = member_id(first)
        local consumer, n = pending(stream, group, h)
        if consumer == ORDER_WAIT then heads[#heads + 1] = {h, n} end
      end
    end
  end
  order_wake(leases, heads)
  return #heads > 0
end

-- Settle the ordering of entries IDS of GROUP, when the group has ordering
-- state at all. TAGS (id -> key, or '' when unknown) give the keys receipts
-- carry (never empty: an unkeyed receipt names none); the others are read
-- from the stream. Returns true when any key's next entry fell due.
local function order_settle_ids(stream, group, leases, ids, tags)
  local z = stream .. ':order:' .. group
  if #ids == 0 or redis.call('EXISTS', z) == 0 then return false end
  local keys = {}
  for i, id in ipairs(ids) do
    local tag = tags[id] or ''
    if tag ~= '' then keys[i] = tag else keys[i] = entry_key(stream, id) end
  end
  local woke = order_settle(stream, group, leases, ids, keys)
  if woke then skiplist(leases) end
  return woke
end

-- Lease entries just read as new (attempt 1) until NOW + LEASE_MS, with one
-- ZADD, or park those whose TTL has passed (HAS_EXPIRY: the queue has an
-- expiry set), or, when KEYS (id -> ordering key) names a key whose turn it
-- is not, park them (with one XCLAIM) to wait for it. Returns the sets of
-- ids parked for the DLQ and parked to wait. IDS are in stream order, so
-- only a key's first entry among them can be its head: the later ones wait
-- unasked. The caller keeps the lease set a skiplist (see skiplist).
local function lease_new(stream, group, leases, expiry, stats, ids, now, lease_ms, hold_ms, has_expiry, keys)
  -- The score as text, formatted once: a Lua number handed to Redis is
  -- formatted again for every member.
  local z, parked, waiting, deadline = {}, {}, {}, lease_score(now + lease_ms, 1)
  local wait = {}
  local behind = {} -- keys whose turn an earlier id of IDS has taken or waits for
  for _, id in ipairs(ids) do
    local key = keys and keys[id] or ''
    if has_expiry and past_ttl(expiry, id, now) then
      park(stream, group, leases, stats, id, now, hold_ms, 'expired')
      parked[id] = true
      if key ~= '' then behind[key] = true end
    elseif key ~= '' and (behind[key] or not order_turn(stream, group, leases, id, key, false)) then
      behind[key] = true
      wait[#wait + 1] = id
      waiting[id] = true
    else
      if key ~= '' then behind[key] = true end
      z[#z + 1] = deadline
      z[#z + 1] = id
    end
  end
  order_park(stream, group, leases, wait, 0, false)
  if #z > 0 then redis.call('ZADD', leases, unpack(z)) end
  return parked, waiting
end
