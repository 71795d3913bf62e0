#!lua name=fraud
-- Server-side steps of the pipeline. Each function applies a whole batch's
-- effects and its XACK in one atomic call, so a crash leaves either all of a
-- batch done or none of it, and a redelivered entry cannot count twice.
--
-- Every step is fenced on ownership: it applies nothing unless every entry it
-- is given is still pending for the calling consumer. An entry that another
-- consumer claimed meanwhile is that consumer's to apply.

local BIG = 1000000

-- Map of id -> delivery count for the entries in [lo, hi] that `consumer` owns.
local function owned_entries(stream, group, consumer, lo, hi)
  local owned = {}
  local rows = redis.call('XPENDING', stream, group, lo, hi, BIG, consumer)
  for _, row in ipairs(rows) do
    owned[row[1]] = row[4]
  end
  return owned
end

-- The fence: `owned` (id -> delivery count) when every id is still pending for
-- `consumer`, else nil and the reply that reports the ids it no longer owns.
local function fence(stream, group, consumer, lo, hi, ids)
  local owned = owned_entries(stream, group, consumer, lo, hi)
  local lost = nil
  for _, id in ipairs(ids) do
    if owned[id] == nil then
      lost = lost or {'fenced'}
      lost[#lost + 1] = id
    end
  end
  if lost then
    return nil, lost
  end
  return owned
end

-- Runs a variadic command over `items` in slices (unpack is bounded by Lua's
-- stack) and returns the concatenated replies.
local function in_slices(command, key, arg, items)
  local out = {}
  local step = 1000
  for first = 1, #items, step do
    local reply
    if arg then
      reply = redis.call(command, key, arg, unpack(items, first, math.min(first + step - 1, #items)))
    else
      reply = redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
    end
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do
        out[#out + 1] = v
      end
    end
  end
  return out
end

local function ack(stream, group, ids)
  in_slices('XACK', stream, group, ids)
end

-- Trimming a device window on every click costs a call each; every TRIM_EVERY-th
-- click is enough to bound it, and the key's TTL removes quiet devices whole.
local TRIM_EVERY = 8

local function count_stats(stats_key, stage, counts)
  for name, n in pairs(counts) do
    if n ~= 0 then
      redis.call('HINCRBY', stats_key, stage .. '.' .. name, n)
    end
  end
end

-- The n original fields are args[from .. from + n - 1].
local function dead_letter(dead_key, stage, id, reason, deliveries, args, from, n)
  redis.call('XADD', dead_key, '*', 'reason', reason, 'stage', stage, 'raw_id', id,
             'deliveries', tostring(deliveries), unpack(args, from, from + n - 1))
end

-- Copies `n` arguments from position `at` into a new table.
local function slice(args, at, n)
  local out = {}
  for j = 1, n do
    out[j] = args[at + j - 1]
  end
  return out
end

-- KEYS: raw stream, verdict stream, dead-letter stream, blacklist filter, stats hash
-- ARGV: group, consumer, lo id, hi id, window ms, spam threshold, horizon ms,
--       window key prefix, then one record per entry:
--       'v', id, device_id, member, ts, ip, n, <n verdict fields>   (a valid click)
--       'd', id, reason, n, <n original fields>                     (a rejected entry)
local function detect(keys, args)
  local raw, verdicts, dead, blacklist, stats = keys[1], keys[2], keys[3], keys[4], keys[5]
  local group, consumer = args[1], args[2]
  local window_ms, threshold, horizon_ms = tonumber(args[5]), tonumber(args[6]), tonumber(args[7])
  local window_prefix = args[8]

  -- First pass: where each record starts. Fields stay in ARGV and are
  -- unpacked straight into XADD, which saves copying them per click.
  local starts, ids, ips = {}, {}, {}
  local i = 9
  while i <= #args do
    starts[#starts + 1] = i
    ids[#ids + 1] = args[i + 1]
    if args[i] == 'v' then
      ips[#ips + 1] = args[i + 5]
      i = i + 7 + tonumber(args[i + 6])
    else
      i = i + 4 + tonumber(args[i + 3])
    end
  end
  if #ids == 0 then
    return {'ok', 0, 0, 0, 0, 0}
  end
  local owned, fenced = fence(raw, group, consumer, args[3], args[4], ids)
  if not owned then
    return fenced
  end

  -- One CF.MEXISTS for the whole batch instead of a module call per click.
  local listed = in_slices('CF.MEXISTS', blacklist, nil, ips)

  local counts = {clean = 0, ip_blacklist = 0, click_spam = 0, duplicate = 0, dead = 0}
  local nth_click = 0
  for _, at in ipairs(starts) do
    local id = args[at + 1]
    if args[at] == 'v' then
      nth_click = nth_click + 1
      local window, member, ts = window_prefix .. args[at + 2], args[at + 3], tonumber(args[at + 4])
      -- ZADD NX both de-duplicates (device_id, transaction_id) and enters the
      -- click into its device's window in one step.
      if redis.call('ZADD', window, 'NX', ts, member) == 0 then
        counts.duplicate = counts.duplicate + 1
      else
        -- Clicks in [ts - window, ts], less this one: the window as it stood before it.
        local earlier = redis.call('ZCOUNT', window, ts - window_ms, ts) - 1
        if nth_click % TRIM_EVERY == 0 then
          redis.call('ZREMRANGEBYSCORE', window, '-inf', '(' .. (ts - horizon_ms))
        end
        -- A quiet device's window goes after at least the horizon. Refreshing the TTL only
        -- once it has fallen below the horizon (PTTL is a read, PEXPIRE a write that the
        -- AOF and replicas must carry) keeps that promise at a fraction of the writes.
        if redis.call('PTTL', window) < horizon_ms then
          redis.call('PEXPIRE', window, 2 * horizon_ms)
        end
        local verdict = 'clean'
        if listed[nth_click] == 1 then
          verdict = 'ip_blacklist'
        elseif earlier >= threshold then
          verdict = 'click_spam'
        end
        counts[verdict] = counts[verdict] + 1
        redis.call('XADD', verdicts, '*', 'verdict', verdict, 'raw_id', id,
                   unpack(args, at + 7, at + 6 + tonumber(args[at + 6])))
      end
    else
      counts.dead = counts.dead + 1
      dead_letter(dead, 'detector', id, args[at + 2], owned[id], args, at + 4, tonumber(args[at + 3]))
    end
  end
  ack(raw, group, ids)
  count_stats(stats, 'detector', counts)
  return {'ok', counts.clean, counts.ip_blacklist, counts.click_spam, counts.duplicate, counts.dead}
end

-- KEYS: verdict stream, stats hash, then one series key per verdict
-- ARGV: group, consumer, lo id, hi id, number of ids, ids..., then triples of
--       (series position in KEYS, bucket timestamp, count)
local function aggregate(keys, args)
  local stream, stats = keys[1], keys[2]
  local group, consumer = args[1], args[2]
  local nids = tonumber(args[5])
  local ids = slice(args, 6, nids)
  if nids == 0 then
    return {'ok', 0, 0}
  end
  local owned, fenced = fence(stream, group, consumer, args[3], args[4], ids)
  if not owned then
    return fenced
  end
  local counted, rejected = 0, 0
  for i = 6 + nids, #args, 3 do
    local n = tonumber(args[i + 2])
    local ok = pcall(redis.call, 'TS.ADD', keys[tonumber(args[i])], args[i + 1], n, 'ON_DUPLICATE', 'SUM')
    if ok then
      counted = counted + n
    else
      -- Older than the series' retention: RedisTimeSeries refuses the sample.
      rejected = rejected + n
    end
  end
  ack(stream, group, ids)
  count_stats(stats, 'aggregator', {counted = counted, rejected = rejected})
  return {'ok', counted, rejected}
end

-- KEYS: source stream, dead-letter stream, stats hash
-- ARGV: group, consumer, stage, lo id, hi id, then records: id, reason, n, <n fields>
local function reject(keys, args)
  local stream, dead, stats = keys[1], keys[2], keys[3]
  local group, consumer, stage = args[1], args[2], args[3]
  local starts, ids = {}, {}
  local i = 6
  while i <= #args do
    starts[#starts + 1] = i
    ids[#ids + 1] = args[i]
    i = i + 3 + tonumber(args[i + 2])
  end
  if #ids == 0 then
    return {'ok', 0}
  end
  local owned, fenced = fence(stream, group, consumer, args[4], args[5], ids)
  if not owned then
    return fenced
  end
  for _, at in ipairs(starts) do
    dead_letter(dead, stage, args[at], args[at + 1], owned[args[at]], args, at + 3, tonumber(args[at + 2]))
  end
  ack(stream, group, ids)
  count_stats(stats, stage, {dead = #ids})
  return {'ok', #ids}
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local ams, aseq = parse_id(a)
  local bms, bseq = parse_id(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

-- The highest MINID that trims nothing a group has yet to deliver or acknowledge.
local function safe_min_id(stream)
  local safe = nil
  local groups = redis.call('XINFO', 'GROUPS', stream)
  for _, g in ipairs(groups) do
    local info = {}
    for j = 1, #g, 2 do
      info[g[j]] = g[j + 1]
    end
    local bound = info['last-delivered-id']
    local summary = redis.call('XPENDING', stream, info['name'])
    if summary[2] and id_less(summary[2], bound) then
      bound = summary[2]
    end
    if safe == nil or id_less(bound, safe) then
      safe = bound
    end
  end
  return safe
end

-- KEYS: stream. ARGV: id below which entries are old enough to go.
-- Trims only entries that every group has delivered and acknowledged; a
-- stream nobody consumes yet is left whole.
local function trim(keys, args)
  local safe = safe_min_id(keys[1])
  if safe == nil then
    return 0
  end
  local target = args[1]
  if id_less(safe, target) then
    target = safe
  end
  return redis.call('XTRIM', keys[1], 'MINID', '~', target)
end

-- KEYS: stream. ARGV: group, idle ms. Deletes consumers idle that long with
-- nothing pending; checking and deleting in one step means none can read in between.
local function forget_idle(keys, args)
  local removed = {}
  local consumers = redis.call('XINFO', 'CONSUMERS', keys[1], args[1])
  for _, c in ipairs(consumers) do
    local info = {}
    for j = 1, #c, 2 do
      info[c[j]] = c[j + 1]
    end
    if info['pending'] == 0 and info['idle'] > tonumber(args[2]) then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], args[1], info['name'])
      removed[#removed + 1] = info['name']
    end
  end
  return removed
end

redis.register_function('fraud_detect', detect)
redis.register_function('fraud_aggregate', aggregate)
redis.register_function('fraud_reject', reject)
redis.register_function('fraud_trim', trim)
redis.register_function('fraud_forget_idle', forget_idle)

-- KEYS: stream, dead-letter stream, stats hash
-- ARGV: group, consumer, stage, min idle ms, start id, count
-- XAUTOCLAIM, and in the same step a `deleted` dead letter for each pending id whose entry
-- is gone from the stream (XAUTOCLAIM drops those from the PEL itself): a click trimmed or
-- deleted while pending still gets its one outcome. Returns XAUTOCLAIM's reply.
local function claim(keys, args)
  local stream, dead, stats = keys[1], keys[2], keys[3]
  local group, consumer, stage = args[1], args[2], args[3]
  local count = tonumber(args[6])
  -- XAUTOCLAIM looks at most count * 10 PEL entries from start: read their delivery counts
  -- first, since those of deleted entries are gone with them afterwards.
  local deliveries = {}
  for _, row in ipairs(redis.call('XPENDING', stream, group, args[5], '+', count * 10)) do
    deliveries[row[1]] = row[4]
  end
  local reply = redis.call('XAUTOCLAIM', stream, group, consumer, args[4], args[5], 'COUNT', count)
  local deleted = reply[3] or {}
  for _, id in ipairs(deleted) do
    dead_letter(dead, stage, id, 'deleted: gone from the stream while pending', deliveries[id] or 0,
                args, 1, 0)
  end
  count_stats(stats, stage, {dead = #deleted})
  return reply
end

redis.register_function('fraud_claim', claim)
