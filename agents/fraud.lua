#!lua name=fraud
-- Server-side steps of the pipeline. Each partition step applies a whole batch's
-- effects and commits its offset in one atomic call, so a crash leaves either all of
-- a batch done or none of it, and no entry is applied twice.
--
-- Every partition step is fenced: it applies nothing unless the caller still holds
-- the partition's lease at the epoch it was given (a stalled former owner can apply
-- nothing), and unless its batch starts right after the offset the partition's
-- consumer group has committed (no batch is applied twice, none skipped, none out of
-- order). The offset is the group's last-delivered-id, moved with XGROUP SETID in the
-- step itself, so that XINFO GROUPS shows each partition's true lag.

-- How many applied batches each partition's commit log keeps (the audit of fencing).
local COMMITS_KEPT = 10000

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
local function dead_letter(dead_key, stage, id, reason, args, from, n)
  if n > DEAD_MAX_ITEMS then
    reason = reason .. '; cut: items ' .. n .. '>' .. DEAD_MAX_ITEMS
    n = DEAD_MAX_ITEMS
  end
  redis.call('XADD', dead_key, '*', 'reason', reason, 'stage', stage, 'raw_id', id,
             unpack(args, from, from + n - 1))
end

-- A step's settings (the same for every call of a deployment) travel packed in one parameter,
-- `config`: name=value lines (pipeline/client/step.py). Each distinct text is parsed once and kept
-- here with what the steps work out from it (`derived`), so that a call pays neither an argument
-- per setting nor their parsing: at a few clicks per call that was a tenth of a call. A cache only:
-- what it holds follows from the text alone, and a library load or a full cache starts it afresh.
local CONFIGS_KEPT = 64
local configs, configs_held = {}, 0

local function config_of(text)
  local entry = configs[text]
  if not entry then
    if configs_held >= CONFIGS_KEPT then
      configs, configs_held = {}, 0
    end
    local values = {}
    for name, value in string.gmatch(text, '([^=\n]+)=([^\n]*)') do
      values[name] = value
    end
    entry = {params = {__index = values}, derived = {}}
    configs[text], configs_held = entry, configs_held + 1
  end
  return entry
end

-- The contract of every step (pipeline/client/step.py): ARGV names the KEYS and the
-- parameters, then lists sections of records whose fields are named too, so a step
-- reads everything by name. Returns keys by name, params by name (a `config`'s settings
-- among them), sections by name, each {at = field name -> offset within a record, starts = record
-- starts, tails = each record's count of tail values (0 without a counted tail), read here once},
-- and the table where a step keeps what it derives from its config (a fresh one without config).
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
    local section = {at = {}, starts = {}, tails = {}}
    for j = 1, nf do
      section.at[args[at + 1 + j]] = j - 1
    end
    local tail = section.at['n']
    local nr = tonumber(args[at + 2 + nf])
    at = at + 3 + nf
    for r = 1, nr do
      local values = tail and tonumber(args[at + tail]) or 0
      section.starts[r], section.tails[r] = at, values
      at = at + nf + values
    end
    s[name] = section
  end
  if not p.config then
    return k, p, s, {}
  end
  local config = config_of(p.config)
  return k, setmetatable(p, config.params), s, config.derived
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

-- An integer (every one here is below 2^53) as exact decimal text: Lua's own
-- number-to-string conversion keeps 14 significant digits only. '%d' goes through a C long
-- (64 bits on every platform Redis runs on), several times cheaper than '%.0f' (a float print).
local function int_text(n)
  return string.format('%d', n)
end

-- The millisecond part of an entry id: its arrival time.
local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- A flat reply of name, value pairs as a table.
local function fields_of(flat)
  local out = {}
  for j = 1, #flat, 2 do
    out[flat[j]] = flat[j + 1]
  end
  return out
end

-- XINFO GROUPS' record of `group` on `stream`, as a table; nil when there is none.
local function group_info(stream, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = fields_of(g)
    if info['name'] == group then
      return info
    end
  end
  return nil
end

-- The fence of a partition step (keys lease, input; params owner, epoch, group, after):
-- the caller holds the lease at its epoch and its batch follows the committed offset.
-- Returns {group = the group's record, and the lease's attempt_at, attempts and suspects_to (nil
-- when unset), read with the fence in one call}, or nil and the 'fenced' reply saying why.
local function open_partition(k, p)
  local lease = redis.call('HMGET', k.lease, 'owner', 'epoch', 'attempt_at', 'attempts', 'suspects_to')
  if lease[1] ~= p.owner or lease[2] ~= p.epoch then
    return nil, {'fenced', 'lease', lease[1] or '', lease[2] or ''}
  end
  local group = group_info(k.input, p.group)
  if not group then
    return nil, {'fenced', 'group', p.group}
  end
  if group['last-delivered-id'] ~= p.after then
    return nil, {'fenced', 'offset', group['last-delivered-id']}
  end
  return {group = group, attempt_at = lease[3] or nil, attempts = lease[4] or nil, suspects_to = lease[5] or nil}
end

-- A group's entries-read count (from XINFO GROUPS): known once a step has committed, 0 at the start.
local function entries_read(group)
  local read = group['entries-read']
  if not read and group['last-delivered-id'] == '0-0' then
    return 0
  end
  return read
end

-- Moves a group's offset to `id`, with its entries-read count when known (nil: not known).
local function set_offset(stream, name, id, read)
  if read then
    redis.call('XGROUP', 'SETID', stream, name, id, 'ENTRIESREAD', read)
  else
    redis.call('XGROUP', 'SETID', stream, name, id)
  end
end

-- Whether decimal text `a` is below `b`: ids are canonical (no leading zeros, as Redis writes
-- them), so a shorter one is smaller, and ones of a length compare as text. Exact at any size,
-- where tonumber is exact only below 2^53 (a producer may set any id up to 2^64 - 1 in both parts).
local function decimal_less(a, b)
  return #a < #b or (#a == #b and a < b)
end

local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if ams ~= bms then
    return decimal_less(ams, bms)
  end
  return decimal_less(aseq, bseq)
end

-- A step that commits a batch ending at `last` also counts the attempt at the batch that follows
-- it, the one its caller begins next (pipeline/runtime/attempts.py): what fraud_attempt would write
-- there for a fresh offset, saving the caller that call. Not while suspects are pending at or after
-- `last` (suspects_to above it, as the fence read it): they keep their own counting, one at a time.
-- Returns whether it counted.
local function count_next_attempt(k, p, fence)
  local bound = fence.suspects_to
  if bound and id_less(p.last, bound) then
    return false
  end
  redis.call('HSET', k.lease, 'attempt_at', p.last, 'attempts', 1)
  return true
end

-- Commits a batch of `count` entries: moves the group's offset to `last`, with its entries-read
-- count so that XINFO GROUPS reports the lag exactly, records the batch in the partition's commit
-- log, counts the next attempt (count_next_attempt) and adds `counts` to the stage's stats. Returns
-- the step's reply: 'ok', the counts, then next_attempt 1 (counted) or 0 (see pipeline/client/step.py).
local function commit(k, p, fence, count, counts)
  local read = entries_read(fence.group)
  set_offset(k.input, p.group, p.last, read and read + count)
  redis.call('XADD', k.commits, 'MAXLEN', '~', COMMITS_KEPT, '*', 'owner', p.owner, 'epoch', p.epoch,
             'after', p.after, 'first', p.first, 'last', p.last, 'count', count)
  local counted_next = count_next_attempt(k, p, fence)
  count_stats(k.stats, p.stage, counts)
  local reply = ok_reply(counts)
  reply[#reply + 1] = 'next_attempt'
  reply[#reply + 1] = counted_next and 1 or 0
  return reply
end

-- Great-circle distance in metres between two positions in degrees: the haversine formula on a
-- sphere of the Earth's mean radius (exact at the antimeridian and the poles; clamped so that
-- rounding never takes asin past 1).
local EARTH_RADIUS_M = 6371008.8

local function great_circle_m(lat1, lon1, lat2, lon2)
  local phi1, phi2 = lat1 * math.pi / 180, lat2 * math.pi / 180
  local dphi, dlambda = (lat2 - lat1) * math.pi / 180, (lon2 - lon1) * math.pi / 180
  local h = math.sin(dphi / 2) ^ 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ^ 2
  return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(math.min(1, h)))
end

-- The rules, one small named function each: true when the click earns that verdict.
-- A click carries what the rules look at: `listed` (its IP is in the blacklist), `earlier`
-- (its device's clicks in [ts - window, ts] before it), `ts`, `beats` (the ts, as text, of its device's
-- previous clicks, at most K, in arrival order), `lat` and `lon` (nil without a position) and
-- `last` (its device's previous positioned click: lat, lon, at; or nil). The caller's
-- `verdicts` parameter orders them: its first name is the verdict of a click no rule matches,
-- the others are tried in turn; each needs a rule here.
local RULES = {
  ip_blacklist = function(click, _)
    return click.listed
  end,
  click_spam = function(click, p)
    return click.earlier >= p.spam_threshold
  end,
  -- Farther from the previous positioned click (while its ts is within the lookback before this
  -- one's) than the speed allows in the time between them, and than the minimum distance.
  -- Integer products (settings bound them below 2^53) keep the comparison exact.
  impossible_travel = function(click, p)
    local last = click.last
    if not click.lat or not last or last.at < click.ts - p.travel_lookback_ms then
      return false
    end
    local d = great_circle_m(last.lat, last.lon, click.lat, click.lon)
    return d > p.travel_min_m and d * 3600 > p.travel_max_kmh * math.abs(click.ts - last.at)
  end,
  -- The intervals from the previous clicks to this one, newest first, while each click's ts is
  -- within the lookback before this one's: robotic with at least the minimum number of them and
  -- a spread (max - min) under the fraction of their mean, i.e. (max - min) * n * 1000 <
  -- permille * sum. Equal times (all intervals 0) are never robotic: 0 is not under 0.
  robotic = function(click, p)
    local beats, ts = click.beats, click.ts
    local n, sum, low, high, newer = 0, 0, math.huge, -math.huge, ts
    -- Read as numbers only as far back as the lookback reaches: a click's parsing cost.
    for j = #beats, 1, -1 do
      local t = tonumber(beats[j])
      if t < ts - p.robotic_lookback_ms then
        break
      end
      local gap = newer - t
      n, sum, newer = n + 1, sum + gap, t
      low, high = math.min(low, gap), math.max(high, gap)
    end
    return n >= p.robotic_min_intervals and (high - low) * n * 1000 < p.robotic_spread_permille * sum
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

-- Reads into `facts` what the device's trail holds for the click in hand (beats, last), then
-- enters the click: its ts among the last K beats, its position (when it has one) as the last.
-- An empty lat means the click carries no position. `cfg`: detect's settings (detect_settings).
local function remember(facts, trail, lat, lon, cfg)
  local held = redis.call('HMGET', trail, 'beats', 'lat', 'lon', 'at')
  -- The times stay text: the rule parses only those it reads, and kept ones need no formatting back.
  local words = {}
  for t in string.gmatch(held[1] or '', '%S+') do
    words[#words + 1] = t
  end
  facts.beats = words
  facts.last = held[4] and {lat = tonumber(held[2]), lon = tonumber(held[3]), at = tonumber(held[4])} or nil
  facts.lat, facts.lon = nil, nil
  local update = {}
  if cfg.keeps_beats then
    local kept = {}
    for j = math.max(1, #words - cfg.robotic_intervals + 2), #words do
      kept[#kept + 1] = words[j]
    end
    kept[#kept + 1] = facts.ts_text
    update = {'beats', table.concat(kept, ' ')}
  end
  if lat ~= '' then
    facts.lat, facts.lon = tonumber(lat), tonumber(lon)
    if cfg.keeps_position then
      local n = #update
      update[n + 1], update[n + 2], update[n + 3], update[n + 4] = 'lat', lat, 'lon', lon
      update[n + 5], update[n + 6] = 'at', facts.ts_text
    end
  end
  if #update > 0 then
    redis.call('HSET', trail, unpack(update))
  end
end

-- The window index holds an upper bound of each device's newest ts: the next multiple of the
-- slack above it, so that the bound moves (and is written) about once per slack of a device's
-- time, not per click. One ZADD GT for a whole batch: it never lowers a bound, and a member whose
-- bound stays is not written (nor sent to the AOF); no read of the index per click.
local function raise_index(index, newest, slack_ms)
  local items = {}
  for device, ts in pairs(newest) do
    items[#items + 1] = int_text(slack_ms > 0 and ts - ts % slack_ms + slack_ms or ts)
    items[#items + 1] = device
  end
  in_slices('ZADD', index, 'GT', items)
end

-- What detect works out from its settings, once per config (decode): the verdict order, the
-- rules' numbers, which parts of a device's trail the rules switched on need (none: no trail is
-- kept), which of a click's optional known fields its verdict copies (FRAUD_VERDICT_FIELDS) when
-- it has them. nil and the error when a verdict has no rule.
local function detect_settings(p)
  local cfg = {order = names(p.verdicts), copies = {}, keeps_beats = false, keeps_position = false}
  for i = 2, #cfg.order do
    local rule = cfg.order[i]
    if not RULES[rule] then
      return nil, 'ERR no rule for the verdict ' .. rule
    end
    cfg.keeps_beats = cfg.keeps_beats or rule == 'robotic'
    cfg.keeps_position = cfg.keeps_position or rule == 'impossible_travel'
  end
  for _, name in ipairs({'window_ms', 'memory_ms', 'history_ms', 'index_slack_ms', 'expire_limit', 'spam_threshold',
                         'robotic_intervals', 'robotic_min_intervals', 'robotic_spread_permille',
                         'robotic_lookback_ms', 'travel_max_kmh', 'travel_lookback_ms'}) do
    cfg[name] = tonumber(p[name])
  end
  cfg.travel_min_m = tonumber(p.travel_min_km) * 1000
  for _, name in ipairs(names(p.copied_known)) do
    cfg.copies[name] = true
  end
  return cfg
end

-- Keys: lease, commits, input, verdicts, dead, blacklist, stats, window_index, rejected (one partition's)
-- Params: group, owner, epoch, after, first, last, stage (the fence and commit), window_prefix, trail_prefix
-- Config: verdicts, window_ms, spam_threshold, memory_ms (H + W), history_ms (H + the longest lookback of a
--         rule on), index_slack_ms, expire_limit, copied_known, robotic_* and travel_* (the rules' settings)
-- Sections: clicks (id, device, transaction ('' for none), ts, ip, lat, lon, n + the verdict's extra fields),
--           rejects (id, reason, n + the bounded copy of the original fields)
--
-- floor = arrival - H - W, arrival being the ms part of the click's id (worked out here rather
-- than sent: an argument per click costs more). A later accepted click has ts >= its
-- arrival - H >= this arrival - H, so it looks back no further than floor: a window entry scored below
-- floor can never count again. Hence (1) an existing member scored below the
-- click's floor is stale and treated exactly as if absent, and (2) windows are
-- trimmed, and removed whole, below the lowest floor of any click still to be
-- judged; neither changes a verdict, whenever (or whether) it runs. Every click of the
-- partition not judged yet is in this batch or comes after its `last` id, so arrived no earlier.
-- The same holds for a device's trail with history_ms in place of memory_ms: its rules read a
-- click of it only while that click's ts is within their lookback before the judged click's ts,
-- so the trail goes whole, with the window, once the device's newest ts is below
-- arrival - history_ms of every click still to be judged (windows wait as long).
local function detect(keys, args)
  local k, p, s, derived = decode(keys, args)
  local cfg = derived.detect
  if not cfg then
    local err
    cfg, err = detect_settings(p)
    if not cfg then
      return redis.error_reply(err)
    end
    derived.detect = cfg
  end
  local clicks, rejects = s.clicks, s.rejects
  local C, R = clicks.at, rejects.at
  local order, copies, keeps_beats, keeps_position = cfg.order, cfg.copies, cfg.keeps_beats, cfg.keeps_position
  local window_ms, memory_ms, history_ms = cfg.window_ms, cfg.memory_ms, cfg.history_ms
  local slack_ms, expire_limit = cfg.index_slack_ms, cfg.expire_limit
  -- A verdict entry as it is built: the detector's fields, the click's known ones, then its extras;
  -- one table for the whole batch, whose first `m` values are the entry in hand.
  local row = {'verdict', '', 'raw_id', '', 'device_id', '', 'ip', '', 'ts', ''}

  local count = #clicks.starts + #rejects.starts
  local ips = {}
  for _, at in ipairs(clicks.starts) do
    ips[#ips + 1] = args[at + C.ip]
  end
  -- Ids ascend in a batch: its first click arrived first, and has the lowest floor.
  local lowest_floor = #ips > 0 and id_ms(args[clicks.starts[1] + C.id]) - memory_ms or math.huge
  local fence, reply = open_partition(k, p)
  if not fence then
    return reply
  end
  -- Below every floor of this batch and of every click not judged yet: those after this
  -- batch arrived no earlier than its last one (after a group reset they come again from
  -- the reset offset, and the batch holds them).
  local forget_below = '(' .. int_text(math.min(lowest_floor, id_ms(p.last) - memory_ms))
  -- A device's whole state (window and trail) goes below the same bound with history_ms in place of memory_ms.
  local forget_state = '(' .. int_text(math.min(lowest_floor - (history_ms - memory_ms), id_ms(p.last) - history_ms))

  -- One CF.MEXISTS for the whole batch instead of a module call per click.
  local listed = in_slices('CF.MEXISTS', k.blacklist, nil, ips)

  local counts = {duplicate = 0, dead = #rejects.starts}
  for _, verdict in ipairs(order) do
    counts[verdict] = 0
  end
  -- What the rules see of the click in hand: one table, refilled for each click.
  local facts = {}
  -- device -> the newest ts of its fresh clicks in this batch (for the window index).
  local bounds = {}
  -- Looked up once for the batch rather than per click (each global or field read is a table lookup).
  local call, window_prefix, verdicts_key = redis.call, p.window_prefix, k.verdicts
  local at_id, at_device, at_transaction, at_ts = C.id, C.device, C.transaction, C.ts
  local at_ip, at_lat, at_lon, at_n = C.ip, C.lat, C.lon, C.n
  for nth, at in ipairs(clicks.starts) do
    local id, device, transaction, ts_text = args[at + at_id], args[at + at_device], args[at + at_transaction],
                                             args[at + at_ts]
    -- Prefixes keep a transaction id from ever colliding with an entry id.
    local member = transaction ~= '' and 't:' .. transaction or 'e:' .. id
    local window, ts = window_prefix .. device, tonumber(ts_text)
    -- ZADD NX both de-duplicates (device_id, transaction_id) and enters the
    -- click into its device's window in one step.
    local fresh = call('ZADD', window, 'NX', ts_text, member) == 1
    if not fresh and tonumber(call('ZSCORE', window, member)) < id_ms(id) - memory_ms then
      -- A stale member, as if trimmed already: this click takes its place.
      call('ZADD', window, ts_text, member)
      fresh = true
    end
    if not fresh then
      counts.duplicate = counts.duplicate + 1
    else
      -- Clicks in [ts - window, ts], less this one: the window as it stood before it.
      -- A number argument is sent as exact integer text when it is integral (Redis 7's ll2string), so
      -- the bound needs no formatting in Lua: only concatenation goes through Lua's 14 digits.
      local earlier = call('ZCOUNT', window, ts - window_ms, ts_text) - 1
      if nth % TRIM_EVERY == 0 then
        call('ZREMRANGEBYSCORE', window, '-inf', forget_below)
      end
      local bound = bounds[device]
      if not bound or ts > bound then
        bounds[device] = ts
      end
      -- ts_text is the click's ts as the detector wrote it: canonical integer text (no sign, no leading zeros).
      facts.listed, facts.earlier, facts.ts, facts.ts_text = listed[nth] == 1, earlier, ts, ts_text
      if keeps_beats or keeps_position then
        remember(facts, p.trail_prefix .. device, args[at + at_lat], args[at + at_lon], cfg)
      end
      local verdict = judge(facts, cfg, order)
      counts[verdict] = counts[verdict] + 1
      -- The click's known fields come from its record (each sent once), its extras after them.
      local lat, m = args[at + at_lat], 10
      row[2], row[4], row[6], row[8], row[10] = verdict, id, device, args[at + at_ip], ts_text
      if copies.transaction_id and transaction ~= '' then
        row[m + 1], row[m + 2], m = 'transaction_id', transaction, m + 2
      end
      if copies.lat and lat ~= '' then
        row[m + 1], row[m + 2], m = 'lat', lat, m + 2
      end
      if copies.lon and lat ~= '' then
        row[m + 1], row[m + 2], m = 'lon', args[at + at_lon], m + 2
      end
      local n = at + at_n
      for j = n + 1, n + clicks.tails[nth] do
        m = m + 1
        row[m] = args[j]
      end
      call('XADD', verdicts_key, '*', unpack(row, 1, m))
    end
  end
  for _, at in ipairs(rejects.starts) do
    local id, n = args[at + R.id], at + R.n
    -- An entry dead-lettered already (re-delivered by a group reset) gets no second dead letter,
    -- within the same horizon as a click's de-duplication: one outcome per entry.
    if redis.call('ZADD', k.rejected, 'NX', string.match(id, '^%d+'), id) == 1 then
      dead_letter(k.dead, p.stage, id, args[at + R.reason], args, n + 1, tonumber(args[n]))
    else
      counts.dead, counts.duplicate = counts.dead - 1, counts.duplicate + 1
    end
  end
  if #rejects.starts > 0 then
    -- Kept like a window's entries: none below the bound can be re-delivered within the horizon.
    redis.call('ZREMRANGEBYSCORE', k.rejected, '-inf', forget_below)
  end
  raise_index(k.window_index, bounds, slack_ms)
  -- Windows whose every click is below the bound go whole, a bounded number per call.
  local gone = redis.call('ZRANGEBYSCORE', k.window_index, '-inf', forget_state, 'LIMIT', 0, expire_limit)
  for _, device in ipairs(gone) do
    redis.call('DEL', p.window_prefix .. device, p.trail_prefix .. device)
  end
  if #gone > 0 then
    in_slices('ZREM', k.window_index, nil, gone)
  end
  return commit(k, p, fence, count, counts)
end

-- An offender bucket's key: <prefix><dimension>:<verdict>:<span_ms>:<start_ms> (keys.py: Keys.offenders).
local function offender_key(prefix, dimension, verdict, span, start)
  return prefix .. dimension .. ':' .. verdict .. ':' .. int_text(span) .. ':' .. int_text(start)
end

-- Space-Saving (Metwally, Agrawal, El Abbadi 2005) in a sorted set of at most `cap` members:
-- a member not yet kept, when the set is full, takes the place of the least counted one and
-- inherits its count. A kept member's count is over-stated by at most what it inherited, which
-- is at most the bucket's flagged clicks / cap; every member above that share is kept.
-- `sizes` (key -> members) holds each bucket's size once read: one ZCARD per bucket per batch.
local function space_saving(key, member, n, cap, sizes)
  -- A kept member is counted in one command (XX: an absent member is left alone, and the reply is nil).
  if redis.call('ZADD', key, 'XX', 'INCR', n, member) then
    return
  end
  local size = sizes[key] or redis.call('ZCARD', key)
  if size < cap then
    redis.call('ZADD', key, n, member)
    sizes[key] = size + 1
  else
    local least = redis.call('ZPOPMIN', key)
    redis.call('ZADD', key, tonumber(least[2]) + n, member)
    sizes[key] = size
  end
end

-- The offenders section: (dimension, verdict, bucket, member, count) per fine bucket; each
-- record goes to its fine and its coarse bucket. A bucket expires a series retention after
-- its end (none when the retention is 0), so their memory is bounded like the series'.
local function offend(prefix, section, args, p)
  local O = section.at
  local fine, coarse, cap = tonumber(p.fine_ms), tonumber(p.coarse_ms), tonumber(p.offenders_cap)
  local retention = tonumber(p.retention_ms)
  local expiries, sizes = {}, {}
  for _, at in ipairs(section.starts) do
    local bucket, n = tonumber(args[at + O.bucket]), tonumber(args[at + O.count])
    for _, span in ipairs({fine, coarse}) do
      local start = bucket - bucket % span
      local key = offender_key(prefix, args[at + O.dimension], args[at + O.verdict], span, start)
      space_saving(key, args[at + O.member], n, cap, sizes)
      expiries[key] = start + span + retention
    end
  end
  if retention > 0 then
    for key, at_ms in pairs(expiries) do
      redis.call('PEXPIREAT', key, int_text(at_ms))
    end
  end
end

-- Keys: lease, commits, input (the partition's verdicts), dead, stats, offenders, then
--       'series:<verdict>' for every verdict (the partition's series)
-- Params: group, owner, epoch, after, first, last, stage (the fence and commit), counted (how many
--         verdict entries the cells count)
-- Config: retention_ms (0: none), fine_ms, coarse_ms, offenders_cap
-- Sections: rejects (id, reason, n + copy), cells (verdict, bucket, count),
--           offenders (dimension, verdict, bucket, member, count)
--
-- Every sample is checked before any is written: RedisTimeSeries refuses one
-- older than the series' newest sample less the retention, and a refusal half
-- way would leave half a batch counted. A batch that would be refused fails the
-- call whole (it is not acknowledged): settings make it impossible unless the
-- aggregator lags the detector by about the retention, which must be seen.
local function aggregate(keys, args)
  local k, p, s = decode(keys, args)
  local cells, rejects = s.cells, s.rejects
  local X, R = cells.at, rejects.at
  local fence, reply = open_partition(k, p)
  if not fence then
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
  for _, at in ipairs(rejects.starts) do
    local n = at + R.n
    dead_letter(k.dead, p.stage, args[at + R.id], args[at + R.reason], args, n + 1, tonumber(args[n]))
  end
  return commit(k, p, fence, tonumber(p.counted) + #rejects.starts, {counted = counted, dead = #rejects.starts})
end

-- Adds a bucket's rows (member, count...) to the running totals of a read of offenders.
local function tally(rows, verdict, totals, per, members)
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

-- Reads the offender buckets covering [from, to] (edges in fine buckets, whole coarse
-- buckets inside, from at most max_range_ms before to) and returns the `limit` members
-- with the most flagged clicks, one JSON object a member: the dimension, the total, and
-- the count per verdict, in that order; the dashboard's table parses them (types kept).
-- KEYS are the offender prefixes of the partitions to read (all of them for the whole picture):
-- a device's counts live in its partition, an address's are summed over every partition.
local function offenders(keys, args)
  local _, p = decode(keys, args)
  local fine, coarse = tonumber(p.fine_ms), tonumber(p.coarse_ms)
  local to = tonumber(p.to)
  local from = math.max(tonumber(p.from), to - tonumber(p.max_range_ms))
  local verdicts = names(p.verdicts)
  local totals, per, members = {}, {}, {}
  local t = from - from % fine
  while t <= to do
    local span = (t % coarse == 0 and t + coarse - 1 <= to) and coarse or fine
    for _, verdict in ipairs(verdicts) do
      for _, prefix in ipairs(keys) do
        local rows = redis.call('ZRANGE', offender_key(prefix, p.dimension, verdict, span, t), 0, -1, 'WITHSCORES')
        tally(rows, verdict, totals, per, members)
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

-- Keys: lease, commits, input, dead, stats
-- Params: group, owner, epoch, after, first, last, stage
-- Sections: entries (id, reason, n + the bounded copy of the original fields)
-- Dead-letters a batch (the entries a stage could not apply, one by one) and commits it.
local function reject(keys, args)
  local k, p, s = decode(keys, args)
  local entries = s.entries
  local E = entries.at
  local fence, reply = open_partition(k, p)
  if not fence then
    return reply
  end
  for _, at in ipairs(entries.starts) do
    local n = at + E.n
    dead_letter(k.dead, p.stage, args[at + E.id], args[at + E.reason], args, n + 1, tonumber(args[n]))
  end
  return commit(k, p, fence, #entries.starts, {dead = #entries.starts})
end

-- Keys: lease, commits, input. Params: group, owner, epoch, after, first, last, stage, limit, alone.
-- Poison pills that kill the caller's process (pipeline/runtime/attempts.py): counts one more
-- attempt at the batch that follows `after`, in the partition's lease hash (attempt_at, attempts,
-- suspects_to), fenced like a step. A batch (alone = 0) whose offset saw `limit` attempts already,
-- or that starts below suspects_to, is not counted: its entries up to `last` become suspects,
-- to be begun one at a time (alone = 1), each counted from zero. Returns {'ok', attempts counted
-- at `after`}, {'suspect', the last suspect id}, or the 'fenced' reply.
local function attempt(keys, args)
  local k, p = decode(keys, args)
  local fence, reply = open_partition(k, p)
  if not fence then
    return reply
  end
  local n = fence.attempt_at == p.after and tonumber(fence.attempts) or 0
  local bound = fence.suspects_to or '0-0'
  if p.alone == '0' then
    if id_less(p.after, bound) then
      return {'suspect', bound}
    end
    if n >= tonumber(p.limit) then
      redis.call('HSET', k.lease, 'attempt_at', p.after, 'attempts', 0, 'suspects_to', p.last)
      return {'suspect', p.last}
    end
  end
  n = n + 1
  redis.call('HSET', k.lease, 'attempt_at', p.after, 'attempts', n)
  return {'ok', n}
end

-- The highest MINID that trims nothing a group has yet to deliver or acknowledge.
local function safe_min_id(stream)
  local safe = nil
  local groups = redis.call('XINFO', 'GROUPS', stream)
  for _, g in ipairs(groups) do
    local info = fields_of(g)
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

-- The server's clock in ms: leases and memberships run out by one clock, whoever asks.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Keys: lease (a hash: owner, epoch, until). Params: action, owner, epoch, ttl_ms.
-- acquire: taken when free, run out, or the caller's; every acquisition is a new epoch.
-- renew: extends the caller's lease at its epoch. release: frees it (the epoch stays, so
-- the next owner's is higher). Returns {epoch held by the caller or 0, current owner}.
local function lease(keys, args)
  local k, p = decode(keys, args)
  local now, ttl = now_ms(), tonumber(p.ttl_ms)
  local held = redis.call('HMGET', k.lease, 'owner', 'epoch', 'until')
  local owner, epoch, till = held[1] or '', tonumber(held[2] or '0'), tonumber(held[3] or '0')
  local mine = owner == p.owner and int_text(epoch) == p.epoch
  if p.action == 'acquire' then
    if owner ~= '' and owner ~= p.owner and till > now then
      return {0, owner}
    end
    epoch = epoch + 1
    redis.call('HSET', k.lease, 'owner', p.owner, 'epoch', int_text(epoch), 'until', int_text(now + ttl))
    return {epoch, p.owner}
  elseif p.action == 'renew' then
    if not mine then
      return {0, owner}
    end
    redis.call('HSET', k.lease, 'until', int_text(now + ttl))
    return {epoch, owner}
  elseif p.action == 'release' then
    if mine then
      redis.call('HSET', k.lease, 'owner', '', 'until', '0')
    end
    return {0, ''}
  end
  return redis.error_reply('ERR unknown lease action ' .. tostring(p.action))
end

-- Keys: members (a sorted set: member -> when its heartbeat runs out).
-- Params: action (join | leave), name, ttl_ms. Forgets members whose heartbeat ran out,
-- then returns the live members.
local function member(keys, args)
  local k, p = decode(keys, args)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', k.members, '-inf', int_text(now))
  if p.action == 'join' then
    redis.call('ZADD', k.members, int_text(now + tonumber(p.ttl_ms)), p.name)
  else
    redis.call('ZREM', k.members, p.name)
  end
  return redis.call('ZRANGE', k.members, 0, -1)
end

-- Appends a routed click to a partition: under its ``clicks:raw`` id (so its arrival, and
-- every verdict, is the same as if it had been judged there), or, when producers write
-- into the partition too and its top is past that id, right after the top.
local function append_routed(stream, id, args, from, n)
  local added = redis.pcall('XADD', stream, id, unpack(args, from, from + n - 1))
  if type(added) == 'table' and added.err then
    local top = fields_of(redis.call('XINFO', 'STREAM', stream))['last-generated-id']
    -- The top's millisecond part as text: as a number it would be rounded past 2^53.
    redis.call('XADD', stream, string.match(top, '^%d+') .. '-*', unpack(args, from, from + n - 1))
  end
end

-- Keys: input, dead, stats, routed (one partition's). Params: stage, last (the highest id of
-- both sections). Sections: entries (id, n + fields), rejects (id, reason, n + bounded copy),
-- each in ``clicks:raw`` order. Copies the router's batch for this partition, idempotently: an
-- id at or below the partition's `routed` mark was copied before (a retry after a crash).
local function route(keys, args)
  local k, p, s = decode(keys, args)
  local mark = redis.call('GET', k.routed)
  if mark and not id_less(mark, p.last) then
    return ok_reply({})
  end
  local counts = {routed = 0, dead = 0}
  -- Ids ascend within a section: once one is past the mark, all after it are.
  local function unrouted(section, each)
    local past = not mark
    for _, at in ipairs(section.starts) do
      local id = args[at + section.at.id]
      past = past or id_less(mark, id)
      if past then
        each(id, at)
      end
    end
  end
  local E, R = s.entries.at, s.rejects.at
  unrouted(s.entries, function(id, at)
    local n = at + E.n
    append_routed(k.input, id, args, n + 1, tonumber(args[n]))
    counts.routed = counts.routed + 1
  end)
  unrouted(s.rejects, function(id, at)
    local n = at + R.n
    dead_letter(k.dead, p.stage, id, args[at + R.reason], args, n + 1, tonumber(args[n]))
    counts.dead = counts.dead + 1
  end)
  redis.call('SET', k.routed, p.last)
  count_stats(k.stats, p.stage, counts)
  return ok_reply(counts)
end

-- Keys: stream. Params: group, after, last, count. Moves a group's offset forward to `last`
-- (never back: a stalled former router's late call changes nothing), with its exact
-- entries-read count (a late batch's counted from the current offset on).
local function advance(keys, args)
  local k, p = decode(keys, args)
  local group = group_info(k.stream, p.group)
  if not group or not id_less(group['last-delivered-id'], p.last) then
    return 0
  end
  local current, read, count = group['last-delivered-id'], entries_read(group), tonumber(p.count)
  if read and current ~= p.after then
    if id_less(p.after, current) then
      -- A former router's late batch, the offset within it: only its entries past the offset are
      -- read now (at most the batch's). Without ENTRIESREAD the group's lag would stay unknown.
      count = #redis.call('XRANGE', k.stream, '(' .. current, p.last, 'COUNT', p.count)
    else
      read = nil
    end
  end
  set_offset(k.stream, p.group, p.last, read and read + count)
  return 1
end

redis.register_function('fraud_detect', detect)
redis.register_function('fraud_aggregate', aggregate)
redis.register_function{function_name = 'fraud_offenders', callback = offenders, flags = {'no-writes'}}
redis.register_function('fraud_reject', reject)
redis.register_function('fraud_attempt', attempt)
redis.register_function('fraud_trim', trim)
redis.register_function('fraud_lease', lease)
redis.register_function('fraud_member', member)
redis.register_function('fraud_route', route)
redis.register_function('fraud_advance', advance)
