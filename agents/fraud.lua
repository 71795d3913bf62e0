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

-- The contract of every step (pipeline/client/step.py): ARGV names the KEYS and the
-- parameters, then lists sections of records whose fields are named too, so a step
-- reads everything by name. Returns keys by name, params by name, and sections by
-- name, each {at = field name -> offset within a record, starts = record starts}.
local function decode(keys, args)
  local k, p, s = {}, {}, {}
  local at = 1
  local nk = tonumber(args[at])
  for j = 1, nk do
    k[args[at + j]] = keys[j]
  end
  at = at + nk + 1
  local np = tonumber(args[at])
  for j = 1, np do
    p[args[at + j]] = args[at + np + j]
  end
  at = at + 2 * np + 1
  local ns = tonumber(args[at])
  at = at + 1
  for _ = 1, ns do
    local name, nf = args[at], tonumber(args[at + 1])
    local section = {at = {}, starts = {}}
    for j = 1, nf do
      section.at[args[at + 1 + j]] = j - 1
    end
    local tail = section.at['n']
    local nr = tonumber(args[at + 2 + nf])
    at = at + 3 + nf
    for _ = 1, nr do
      section.starts[#section.starts + 1] = at
      at = at + nf + (tail and tonumber(args[at + tail]) or 0)
    end
    s[name] = section
  end
  return k, p, s
end

-- The reply of a step that applied its batch: 'ok', then name, count pairs.
local function ok_reply(counts)
  local out = {'ok'}
  for name, n in pairs(counts) do
    out[#out + 1] = name
    out[#out + 1] = n
  end
  return out
end

-- The ids of a section's records (its `id` field), appended to `out`.
local function section_ids(args, section, out)
  out = out or {}
  for _, at in ipairs(section.starts) do
    out[#out + 1] = args[at + section.at.id]
  end
  return out
end

-- Every batch step opens so: no ids, nothing to do; else the fence. Returns the
-- owned map, or nil and the reply to give ('ok' with no counts, or 'fenced').
local function open_batch(stream, p, ids)
  if #ids == 0 then
    return nil, ok_reply({})
  end
  return fence(stream, p.group, p.consumer, p.lo, p.hi, ids)
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

-- The rules, one small named function each: true when the click earns that verdict.
-- A click carries what the rules look at: `listed` (its IP is in the blacklist) and
-- `earlier` (its device's clicks in [ts - window, ts] before it). The caller's
-- `verdicts` parameter orders them: its first name is the verdict of a click no
-- rule matches, the others are tried in turn; each needs a rule here.
local RULES = {
  ip_blacklist = function(click, _)
    return click.listed
  end,
  click_spam = function(click, p)
    return click.earlier >= p.spam_threshold
  end,
}

local function names(text)
  local out = {}
  for name in string.gmatch(text, '[^,]+') do
    out[#out + 1] = name
  end
  return out
end

local function judge(click, p, order)
  for i = 2, #order do
    if RULES[order[i]](click, p) then
      return order[i]
    end
  end
  return order[1]
end

-- Keys: raw, verdicts, dead, blacklist, stats, window_index
-- Params: group, consumer, stage, lo, hi, verdicts, window_ms, spam_threshold,
--         memory_ms (H + W), window_prefix, index_slack_ms, expire_limit
-- Sections: clicks (id, device, member, ts, ip, floor, n + the verdict's fields),
--           rejects (id, reason, n + the bounded copy of the original fields)
--
-- floor = arrival - H - W. A later accepted click has ts >= its arrival - H >= this
-- arrival - H, so it looks back no further than floor: a window entry scored below
-- floor can never count again. Hence (1) an existing member scored below the
-- click's floor is stale and treated exactly as if absent, and (2) windows are
-- trimmed, and removed whole, below the lowest floor of any click still to be
-- judged; neither changes a verdict, whenever (or whether) it runs.
local function detect(keys, args)
  local k, p, s = decode(keys, args)
  local clicks, rejects = s.clicks, s.rejects
  local C, R = clicks.at, rejects.at
  local order = names(p.verdicts)
  for i = 2, #order do
    if not RULES[order[i]] then
      return redis.error_reply('ERR no rule for the verdict ' .. order[i])
    end
  end
  local window_ms, memory_ms = tonumber(p.window_ms), tonumber(p.memory_ms)
  p.spam_threshold = tonumber(p.spam_threshold)
  local slack_ms, expire_limit = tonumber(p.index_slack_ms), tonumber(p.expire_limit)

  local ids = section_ids(args, rejects, section_ids(args, clicks))
  local ips = {}
  local lowest_floor = math.huge
  for _, at in ipairs(clicks.starts) do
    ips[#ips + 1] = args[at + C.ip]
    lowest_floor = math.min(lowest_floor, tonumber(args[at + C.floor]))
  end
  local owned, reply = open_batch(k.raw, p, ids)
  if not owned then
    return reply
  end
  -- Below every floor of this batch and of every click not judged yet (other
  -- consumers' batches in flight, entries a group reset will deliver again).
  local forget_below = '(' .. int_text(math.min(lowest_floor, oldest_unjudged_ms(k.raw, p.group) - memory_ms))

  -- One CF.MEXISTS for the whole batch instead of a module call per click.
  local listed = in_slices('CF.MEXISTS', k.blacklist, nil, ips)

  local counts = {duplicate = 0, dead = #rejects.starts}
  for _, verdict in ipairs(order) do
    counts[verdict] = 0
  end
  -- What the rules see of the click in hand: one table, refilled for each click.
  local facts = {}
  for nth, at in ipairs(clicks.starts) do
    local id, device, member, ts_text = args[at + C.id], args[at + C.device], args[at + C.member], args[at + C.ts]
    local window, ts = p.window_prefix .. device, tonumber(ts_text)
    -- ZADD NX both de-duplicates (device_id, transaction_id) and enters the
    -- click into its device's window in one step.
    local fresh = redis.call('ZADD', window, 'NX', ts_text, member) == 1
    if not fresh and tonumber(redis.call('ZSCORE', window, member)) < tonumber(args[at + C.floor]) then
      -- A stale member, as if trimmed already: this click takes its place.
      redis.call('ZADD', window, ts_text, member)
      fresh = true
    end
    if not fresh then
      counts.duplicate = counts.duplicate + 1
    else
      -- Clicks in [ts - window, ts], less this one: the window as it stood before it.
      local earlier = redis.call('ZCOUNT', window, int_text(ts - window_ms), ts_text) - 1
      if nth % TRIM_EVERY == 0 then
        redis.call('ZREMRANGEBYSCORE', window, '-inf', forget_below)
      end
      -- The index keeps an upper bound of the device's newest ts, written only
      -- when a click passes it (then raised by the slack), to save writes.
      local bound = redis.call('ZSCORE', k.window_index, device)
      if not bound or ts > tonumber(bound) then
        redis.call('ZADD', k.window_index, int_text(ts + slack_ms), device)
      end
      facts.listed, facts.earlier = listed[nth] == 1, earlier
      local verdict = judge(facts, p, order)
      counts[verdict] = counts[verdict] + 1
      local n = at + C.n
      redis.call('XADD', k.verdicts, '*', 'verdict', verdict, 'raw_id', id,
                 unpack(args, n + 1, n + tonumber(args[n])))
    end
  end
  for _, at in ipairs(rejects.starts) do
    local id, n = args[at + R.id], at + R.n
    dead_letter(k.dead, p.stage, id, args[at + R.reason], owned[id], args, n + 1, tonumber(args[n]))
  end
  -- Windows whose every click is below the bound go whole, a bounded number per call.
  local gone = redis.call('ZRANGEBYSCORE', k.window_index, '-inf', forget_below, 'LIMIT', 0, expire_limit)
  for _, device in ipairs(gone) do
    redis.call('DEL', p.window_prefix .. device)
  end
  if #gone > 0 then
    in_slices('ZREM', k.window_index, nil, gone)
  end
  ack(k.raw, p.group, ids)
  count_stats(k.stats, p.stage, counts)
  return ok_reply(counts)
end

-- An offender bucket's key: <prefix><dimension>:<verdict>:<span_ms>:<start_ms> (keys.py: Keys.offenders).
local function offender_key(prefix, dimension, verdict, span, start)
  return prefix .. dimension .. ':' .. verdict .. ':' .. int_text(span) .. ':' .. int_text(start)
end

-- Space-Saving (Metwally, Agrawal, El Abbadi 2005) in a sorted set of at most `cap` members:
-- a member not yet kept, when the set is full, takes the place of the least counted one and
-- inherits its count. A kept member's count is over-stated by at most what it inherited, which
-- is at most the bucket's flagged clicks / cap; every member above that share is kept.
local function space_saving(key, member, n, cap)
  if redis.call('ZSCORE', key, member) or redis.call('ZCARD', key) < cap then
    redis.call('ZINCRBY', key, n, member)
  else
    local least = redis.call('ZPOPMIN', key)
    redis.call('ZADD', key, tonumber(least[2]) + n, member)
  end
end

-- The offenders section: (dimension, verdict, bucket, member, count) per fine bucket; each
-- record goes to its fine and its coarse bucket. A bucket expires a series retention after
-- its end (none when the retention is 0), so their memory is bounded like the series'.
local function offend(prefix, section, args, p)
  local O = section.at
  local fine, coarse, cap = tonumber(p.fine_ms), tonumber(p.coarse_ms), tonumber(p.offenders_cap)
  local retention = tonumber(p.retention_ms)
  local expiries = {}
  for _, at in ipairs(section.starts) do
    local bucket, n = tonumber(args[at + O.bucket]), tonumber(args[at + O.count])
    for _, span in ipairs({fine, coarse}) do
      local start = bucket - bucket % span
      local key = offender_key(prefix, args[at + O.dimension], args[at + O.verdict], span, start)
      space_saving(key, args[at + O.member], n, cap)
      expiries[key] = start + span + retention
    end
  end
  if retention > 0 then
    for key, at_ms in pairs(expiries) do
      redis.call('PEXPIREAT', key, int_text(at_ms))
    end
  end
end

-- Keys: verdicts, stats, then 'series:<verdict>' for every verdict
-- Params: group, consumer, stage, lo, hi, retention_ms (0: none)
-- Sections: entries (id), cells (verdict, bucket, count)
--
-- Every sample is checked before any is written: RedisTimeSeries refuses one
-- older than the series' newest sample less the retention, and a refusal half
-- way would leave half a batch counted. A batch that would be refused fails the
-- call whole (it is not acknowledged): settings make it impossible unless the
-- aggregator lags the detector by about the retention, which must be seen.
local function aggregate(keys, args)
  local k, p, s = decode(keys, args)
  local entries, cells = s.entries, s.cells
  local X = cells.at
  local ids = section_ids(args, entries)
  local owned, reply = open_batch(k.verdicts, p, ids)
  if not owned then
    return reply
  end
  local retention = tonumber(p.retention_ms)
  if retention > 0 then
    local newest, oldest = -math.huge, math.huge
    for name, key in pairs(k) do
      if string.sub(name, 1, 7) == 'series:' then
        local last = redis.call('TS.GET', key)
        if last[1] then
          newest = math.max(newest, tonumber(last[1]))
        end
      end
    end
    for _, at in ipairs(cells.starts) do
      local bucket = tonumber(args[at + X.bucket])
      newest, oldest = math.max(newest, bucket), math.min(oldest, bucket)
    end
    if oldest < newest - retention then
      return redis.error_reply('series_refused: bucket ' .. int_text(oldest) .. ' is older than the newest sample '
                               .. int_text(newest) .. ' less the retention ' .. int_text(retention))
    end
  end
  local counted = 0
  for _, at in ipairs(cells.starts) do
    local n = tonumber(args[at + X.count])
    redis.call('TS.ADD', k['series:' .. args[at + X.verdict]], args[at + X.bucket], n, 'ON_DUPLICATE', 'SUM')
    counted = counted + n
  end
  offend(k.offenders, s.offenders, args, p)
  ack(k.verdicts, p.group, ids)
  count_stats(k.stats, p.stage, {counted = counted})
  return ok_reply({counted = counted})
end

-- Reads the offender buckets covering [from, to] (edges in fine buckets, whole coarse
-- buckets inside, from at most max_range_ms before to) and returns the `limit` members
-- with the most flagged clicks, one JSON object a member: the dimension, the total, and
-- the count per verdict, in that order; the dashboard's table parses them (types kept).
local function offenders(keys, args)
  local k, p = decode(keys, args)
  local fine, coarse = tonumber(p.fine_ms), tonumber(p.coarse_ms)
  local to = tonumber(p.to)
  local from = math.max(tonumber(p.from), to - tonumber(p.max_range_ms))
  local verdicts = names(p.verdicts)
  local totals, per, members = {}, {}, {}
  local t = from - from % fine
  while t <= to do
    local span = (t % coarse == 0 and t + coarse - 1 <= to) and coarse or fine
    for _, verdict in ipairs(verdicts) do
      local rows = redis.call('ZRANGE', offender_key(k.offenders, p.dimension, verdict, span, t), 0, -1, 'WITHSCORES')
      for j = 1, #rows, 2 do
        local member, n = rows[j], tonumber(rows[j + 1])
        if not totals[member] then
          totals[member], per[member] = 0, {}
          members[#members + 1] = member
        end
        totals[member] = totals[member] + n
        per[member][verdict] = (per[member][verdict] or 0) + n
      end
    end
    t = t + span
  end
  table.sort(members, function(a, b)
    if totals[a] ~= totals[b] then return totals[a] > totals[b] end
    return a < b
  end)
  local out = {}
  for j = 1, math.min(#members, tonumber(p.limit)) do
    local member = members[j]
    local row = {'{', cjson.encode(p.dimension), ':', cjson.encode(member), ',"flagged clicks":', int_text(totals[member])}
    for _, verdict in ipairs(verdicts) do
      row[#row + 1] = ',' .. cjson.encode(verdict) .. ':' .. int_text(per[member][verdict] or 0)
    end
    row[#row + 1] = '}'
    out[#out + 1] = table.concat(row)
  end
  return out
end

-- Keys: stream, dead, stats
-- Params: group, consumer, stage, lo, hi
-- Sections: entries (id, reason, n + the bounded copy of the original fields)
local function reject(keys, args)
  local k, p, s = decode(keys, args)
  local entries = s.entries
  local E = entries.at
  local ids = section_ids(args, entries)
  local owned, reply = open_batch(k.stream, p, ids)
  if not owned then
    return reply
  end
  for _, at in ipairs(entries.starts) do
    local id, n = args[at + E.id], at + E.n
    dead_letter(k.dead, p.stage, id, args[at + E.reason], owned[id], args, n + 1, tonumber(args[n]))
  end
  ack(k.stream, p.group, ids)
  count_stats(k.stats, p.stage, {dead = #ids})
  return ok_reply({dead = #ids})
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

-- Keys: stream. Params: keep_from (an id: entries below it are old enough to go).
-- Trims only entries that every group has delivered and acknowledged; a
-- stream nobody consumes yet is left whole.
local function trim(keys, args)
  local k, p = decode(keys, args)
  local safe = safe_min_id(k.stream)
  if safe == nil then
    return 0
  end
  local target = p.keep_from
  if id_less(safe, target) then
    target = safe
  end
  return redis.call('XTRIM', k.stream, 'MINID', '~', target)
end

-- Keys: stream. Params: group, idle_ms. Deletes consumers idle that long with
-- nothing pending; checking and deleting in one step means none can read in between.
local function forget_idle(keys, args)
  local k, p = decode(keys, args)
  local removed = {}
  local consumers = redis.call('XINFO', 'CONSUMERS', k.stream, p.group)
  for _, c in ipairs(consumers) do
    local info = {}
    for j = 1, #c, 2 do
      info[c[j]] = c[j + 1]
    end
    if info['pending'] == 0 and info['idle'] > tonumber(p.idle_ms) then
      redis.call('XGROUP', 'DELCONSUMER', k.stream, p.group, info['name'])
      removed[#removed + 1] = info['name']
    end
  end
  return removed
end

redis.register_function('fraud_detect', detect)
redis.register_function('fraud_aggregate', aggregate)
redis.register_function{function_name = 'fraud_offenders', callback = offenders, flags = {'no-writes'}}
redis.register_function('fraud_reject', reject)
redis.register_function('fraud_trim', trim)
redis.register_function('fraud_forget_idle', forget_idle)

-- Keys: stream, dead, stats. Params: group, consumer, stage, min_idle_ms, start, count
-- XAUTOCLAIM, and in the same step a `deleted` dead letter for each pending id whose entry
-- is gone from the stream (XAUTOCLAIM drops those from the PEL itself): a click trimmed or
-- deleted while pending still gets its one outcome. Returns XAUTOCLAIM's reply.
local function claim(keys, args)
  local k, p = decode(keys, args)
  local count = tonumber(p.count)
  -- XAUTOCLAIM looks at most count * 10 PEL entries from start: read their delivery counts
  -- first, since those of deleted entries are gone with them afterwards.
  local deliveries = {}
  for _, row in ipairs(redis.call('XPENDING', k.stream, p.group, p.start, '+', count * 10)) do
    deliveries[row[1]] = row[4]
  end
  local reply = redis.call('XAUTOCLAIM', k.stream, p.group, p.consumer, p.min_idle_ms, p.start, 'COUNT', count)
  local deleted = reply[3] or {}
  for _, id in ipairs(deleted) do
    dead_letter(k.dead, p.stage, id, 'deleted: gone from the stream while pending', deliveries[id] or 0,
                args, 1, 0)
  end
  count_stats(k.stats, p.stage, {dead = #deleted})
  return reply
end

redis.register_function('fraud_claim', claim)
