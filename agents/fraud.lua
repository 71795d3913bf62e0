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
-- click is enough to bound it. The trim bound never reaches what a verdict can
-- still need (see detect), so the cadence affects memory only, never a verdict.
local TRIM_EVERY = 8

-- At most this many values of one record are ever unpacked (Lua's stack takes
-- about 8,000): callers bound a dead letter's copy; this is the last safety net.
local DEAD_MAX_ITEMS = 2000

local function count_stats(stats_key, stage, counts)
  for name, n in pairs(counts) do
    if n ~= 0 then
      redis.call('HINCRBY', stats_key, stage .. '.' .. name, n)
    end
  end
end

-- The n original fields are args[from .. from + n - 1].
local function dead_letter(dead_key, stage, id, reason, deliveries, args, from, n)
  if n > DEAD_MAX_ITEMS then
    reason = reason .. '; cut: items ' .. n .. '>' .. DEAD_MAX_ITEMS
    n = DEAD_MAX_ITEMS
  end
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

-- An integer (every one here is below 2^53) as exact decimal text: Lua's own
-- number-to-string conversion keeps 14 significant digits only.
local function int_text(n)
  return string.format('%.0f', n)
end

-- The millisecond part of an entry id: its arrival time.
local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The lowest arrival time of any entry `group` has yet to judge: the oldest
-- pending one, or the first after its last-delivered id (lower after a reset).
local function oldest_unjudged_ms(stream, group)
  local oldest = math.huge
  local summary = redis.call('XPENDING', stream, group)
  if summary[2] then
    oldest = id_ms(summary[2])
  end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for j = 1, #g, 2 do
      info[g[j]] = g[j + 1]
    end
    if info['name'] == group then
      oldest = math.min(oldest, id_ms(info['last-delivered-id']))
    end
  end
  return oldest
end

-- KEYS: raw stream, verdict stream, dead-letter stream, blacklist filter, stats hash, window index
-- ARGV: group, consumer, lo id, hi id, window ms W, spam threshold, memory ms (H + W),
--       window key prefix, index slack ms, most windows to remove, then one record per entry:
--       'v', id, device_id, member, ts, ip, floor, n, <n verdict fields>   (a valid click)
--       'd', id, reason, n, <n original fields, bounded by the caller>     (a rejected entry)
--
-- floor = arrival - H - W. A later accepted click has ts >= its arrival - H >= this
-- arrival - H, so it looks back no further than floor: a window entry scored below
-- floor can never count again. Hence (1) an existing member scored below the
-- click's floor is stale and treated exactly as if absent, and (2) windows are
-- trimmed, and removed whole, below the lowest floor of any click still to be
-- judged; neither changes a verdict, whenever (or whether) it runs.
local function detect(keys, args)
  local raw, verdicts, dead, blacklist, stats, index = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local group, consumer = args[1], args[2]
  local window_ms, threshold, memory_ms = tonumber(args[5]), tonumber(args[6]), tonumber(args[7])
  local window_prefix, slack_ms, expire_limit = args[8], tonumber(args[9]), tonumber(args[10])

  -- First pass: where each record starts. Fields stay in ARGV and are
  -- unpacked straight into XADD, which saves copying them per click.
  local starts, ids, ips = {}, {}, {}
  local lowest_floor = math.huge
  local i = 11
  while i <= #args do
    starts[#starts + 1] = i
    ids[#ids + 1] = args[i + 1]
    if args[i] == 'v' then
      ips[#ips + 1] = args[i + 5]
      lowest_floor = math.min(lowest_floor, tonumber(args[i + 6]))
      i = i + 8 + tonumber(args[i + 7])
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
  -- Below every floor of this batch and of every click not judged yet (other
  -- consumers' batches in flight, entries a group reset will deliver again).
  local forget_below = '(' .. int_text(math.min(lowest_floor, oldest_unjudged_ms(raw, group) - memory_ms))

  -- One CF.MEXISTS for the whole batch instead of a module call per click.
  local listed = in_slices('CF.MEXISTS', blacklist, nil, ips)

  local counts = {clean = 0, ip_blacklist = 0, click_spam = 0, duplicate = 0, dead = 0}
  local nth_click = 0
  for _, at in ipairs(starts) do
    local id = args[at + 1]
    if args[at] == 'v' then
      nth_click = nth_click + 1
      local device, member, ts_text = args[at + 2], args[at + 3], args[at + 4]
      local window, ts = window_prefix .. device, tonumber(ts_text)
      -- ZADD NX both de-duplicates (device_id, transaction_id) and enters the
      -- click into its device's window in one step.
      local fresh = redis.call('ZADD', window, 'NX', ts_text, member) == 1
      if not fresh and tonumber(redis.call('ZSCORE', window, member)) < tonumber(args[at + 6]) then
        -- A stale member, as if trimmed already: this click takes its place.
        redis.call('ZADD', window, ts_text, member)
        fresh = true
      end
      if not fresh then
        counts.duplicate = counts.duplicate + 1
      else
        -- Clicks in [ts - window, ts], less this one: the window as it stood before it.
        local earlier = redis.call('ZCOUNT', window, int_text(ts - window_ms), ts_text) - 1
        if nth_click % TRIM_EVERY == 0 then
          redis.call('ZREMRANGEBYSCORE', window, '-inf', forget_below)
        end
        -- The index keeps an upper bound of the device's newest ts, written only
        -- when a click passes it (then raised by the slack), to save writes.
        local bound = redis.call('ZSCORE', index, device)
        if not bound or ts > tonumber(bound) then
          redis.call('ZADD', index, int_text(ts + slack_ms), device)
        end
        local verdict = 'clean'
        if listed[nth_click] == 1 then
          verdict = 'ip_blacklist'
        elseif earlier >= threshold then
          verdict = 'click_spam'
        end
        counts[verdict] = counts[verdict] + 1
        redis.call('XADD', verdicts, '*', 'verdict', verdict, 'raw_id', id,
                   unpack(args, at + 8, at + 7 + tonumber(args[at + 7])))
      end
    else
      counts.dead = counts.dead + 1
      dead_letter(dead, 'detector', id, args[at + 2], owned[id], args, at + 4, tonumber(args[at + 3]))
    end
  end
  -- Windows whose every click is below the bound go whole, a bounded number per call.
  local gone = redis.call('ZRANGEBYSCORE', index, '-inf', forget_below, 'LIMIT', 0, expire_limit)
  for _, device in ipairs(gone) do
    redis.call('DEL', window_prefix .. device)
  end
  if #gone > 0 then
    in_slices('ZREM', index, nil, gone)
  end
  ack(raw, group, ids)
  count_stats(stats, 'detector', counts)
  return {'ok', counts.clean, counts.ip_blacklist, counts.click_spam, counts.duplicate, counts.dead}
end

-- KEYS: verdict stream, stats hash, then one series key per verdict
-- ARGV: group, consumer, lo id, hi id, series retention ms (0: none), number of ids, ids...,
--       then triples of (series position in KEYS, bucket timestamp, count)
--
-- Every sample is checked before any is written: RedisTimeSeries refuses one
-- older than the series' newest sample less the retention, and a refusal half
-- way would leave half a batch counted. A batch that would be refused fails the
-- call whole (it is not acknowledged): settings make it impossible unless the
-- aggregator lags the detector by about the retention, which must be seen.
local function aggregate(keys, args)
  local stream, stats = keys[1], keys[2]
  local group, consumer = args[1], args[2]
  local retention = tonumber(args[5])
  local nids = tonumber(args[6])
  local ids = slice(args, 7, nids)
  if nids == 0 then
    return {'ok', 0}
  end
  local owned, fenced = fence(stream, group, consumer, args[3], args[4], ids)
  if not owned then
    return fenced
  end
  if retention > 0 then
    local newest, oldest = -math.huge, math.huge
    for k = 3, #keys do
      local last = redis.call('TS.GET', keys[k])
      if last[1] then
        newest = math.max(newest, tonumber(last[1]))
      end
    end
    for i = 7 + nids, #args, 3 do
      local at = tonumber(args[i + 1])
      newest, oldest = math.max(newest, at), math.min(oldest, at)
    end
    if oldest < newest - retention then
      return redis.error_reply('series_refused: bucket ' .. int_text(oldest) .. ' is older than the newest sample '
                               .. int_text(newest) .. ' less the retention ' .. int_text(retention))
    end
  end
  local counted = 0
  for i = 7 + nids, #args, 3 do
    local n = tonumber(args[i + 2])
    redis.call('TS.ADD', keys[tonumber(args[i])], args[i + 1], n, 'ON_DUPLICATE', 'SUM')
    counted = counted + n
  end
  ack(stream, group, ids)
  count_stats(stats, 'aggregator', {counted = counted})
  return {'ok', counted}
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
