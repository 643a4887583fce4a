//! The Lua scripts of the Redis store. Each runs atomically on the server, in one round trip.
//!
//! Every script takes the key prefix as `ARGV[1]` and builds key names from it (the store targets
//! a single Redis, not a cluster, so keys need not be declared in `KEYS`). Bulk writes are split
//! into commands of at most `CHUNK` (1,000) arguments because Lua's `unpack` is bounded.

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers, prepended to every script.
const PRELUDE: &str = r#"
local CHUNK = 1000
local p = ARGV[1]

-- Runs `cmd key <items[first..last]>` in slices of CHUNK items (CHUNK is even, so field/value
-- pairs are never split).
local function chunked(cmd, key, items, first, last)
  local j = first
  while j <= last do
    local k = math.min(j + CHUNK - 1, last)
    redis.call(cmd, key, unpack(items, j, k))
    j = k + 1
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function bkey(id) return p .. 'batch:' .. id end

-- Whether Redis lost the state written under generation `gen` (`''` = not checked): the marker
-- `{p}generation` no longer holds it after a restart without persistence, a FLUSHALL or an
-- eviction, and no write may then land.
local function lost(gen)
  return gen ~= '' and redis.call('GET', p .. 'generation') ~= gen
end
local LOST = 'STRATA_STATE_LOST the generation marker ' .. p .. 'generation is missing or changed'

-- Removes the global dead-letter entries of a batch listed in its per-batch index, at most
-- `budget` of them; returns how many were removed.
local function unindex_dead(id, budget)
  local idx = bkey(id) .. ':dlqidx'
  local nodes = redis.call('ZRANGE', idx, 0, budget - 1)
  if #nodes == 0 then return 0 end
  local members = {}
  for i, n in ipairs(nodes) do members[i] = id .. ':' .. n end
  chunked('ZREM', p .. 'dlq', members, 1, #members)
  -- Letters of an expired batch never produced leave the outbox with it.
  chunked('ZREM', p .. 'dlq:unsent', members, 1, #members)
  chunked('ZREM', idx, nodes, 1, #nodes)
  return #nodes
end

-- A batch became terminal: every key of it expires in `ttl` ms (its dead-letter index a grace
-- period later, so that the pruner can still find its global entries).
local function expire_batch(id, ttl, grace)
  local b = bkey(id)
  for _, k in ipairs({b, b .. ':objects', b .. ':nodes', b .. ':trails', b .. ':dlq'}) do
    redis.call('PEXPIRE', k, ttl)
  end
  redis.call('PEXPIRE', b .. ':dlqidx', ttl + grace)
  local idem = redis.call('HGET', b, 'idem')
  if idem then redis.call('PEXPIRE', p .. 'idem:' .. idem, ttl) end
  redis.call('ZADD', p .. 'expiring', now_ms() + ttl, id)
end

-- A terminal batch was reopened: it no longer expires.
local function persist_batch(id)
  local b = bkey(id)
  for _, k in ipairs({b, b .. ':objects', b .. ':nodes', b .. ':trails', b .. ':dlq',
      b .. ':dlqidx'}) do
    redis.call('PERSIST', k)
  end
  local idem = redis.call('HGET', b, 'idem')
  if idem then redis.call('PERSIST', p .. 'idem:' .. idem) end
  redis.call('ZREM', p .. 'expiring', id)
end

-- A key written to a terminal batch after it was set to expire gets the batch's remaining TTL.
local function follow_ttl(id, key, grace)
  if redis.call('PTTL', key) == -1 then
    local left = redis.call('PTTL', bkey(id))
    if left > 0 then redis.call('PEXPIRE', key, left + grace) end
  end
end
"#;

/// `create_batch`.
///
/// ARGV: prefix, batch id, idempotency key, content hash, created_at_ms, options JSON, objects
/// JSON, state, next_epoch, finished_at_ms (`''` = none), ttl ms, grace ms, layout hash, then
/// node/record pairs, then the generation (`''` = not checked).
///
/// Returns `{'created'}` or `{'existing', id, hash}`. Re-running the very same create (same id,
/// hash and created_at_ms: a retry after an ambiguous failure) returns `{'created'}` again.
const CREATE: &str = r#"
if lost(ARGV[#ARGV]) then return redis.error_reply(LOST) end
local id, idem_key, hash, created = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state, epoch, finished = ARGV[8], ARGV[9], ARGV[10]
local ttl, grace = tonumber(ARGV[11]), tonumber(ARGV[12])
local idem = p .. 'idem:' .. idem_key
local b = bkey(id)

local existing = redis.call('GET', idem)
if existing then
  local e = redis.call('HMGET', bkey(existing), 'hash', 'created_at_ms')
  if e[1] then
    if existing == id and e[1] == hash and e[2] == created then return {'created'} end
    return {'existing', existing, e[1]}
  end
  -- The key names a batch that is gone: the key is free again.
end
if redis.call('EXISTS', b) == 1 then
  return redis.error_reply('STRATA batch id ' .. id .. ' is taken by idempotency key ' ..
    tostring(redis.call('HGET', b, 'idem')))
end

-- Leftovers of an expired batch with the same id (batches stored before ids took the creation
-- time in: they derived from the idempotency key alone).
unindex_dead(id, redis.call('ZCARD', b .. ':dlqidx') + 1)
redis.call('DEL', b .. ':objects', b .. ':nodes', b .. ':trails', b .. ':dlq', b .. ':dlqidx')
redis.call('ZREM', p .. 'expiring', id)

redis.call('SET', idem, id)
redis.call('HSET', b, 'id', id, 'idem', idem_key, 'hash', hash, 'created_at_ms', created,
  'options', ARGV[6], 'state', state, 'next_epoch', epoch)
if finished ~= '' then redis.call('HSET', b, 'finished_at_ms', finished) end
if ARGV[13] ~= '' then redis.call('HSET', b, 'layout', ARGV[13]) end
redis.call('SET', b .. ':objects', ARGV[7])
if #ARGV > 14 then chunked('HSET', b .. ':nodes', ARGV, 14, #ARGV - 1) end
redis.call('ZADD', p .. 'batches', created, id)
if state == 'RUNNING' then
  redis.call('SADD', p .. 'active', id)
else
  expire_batch(id, ttl, grace)
end
return {'created'}
"#;

/// `apply`.
///
/// ARGV: prefix, ttl ms, grace ms,
/// dead-letter count, then per letter: batch id, node, dead_at_ms, payload;
/// retry count, then per retry: due_ms, member;
/// batch count, then per batch: id, state, next_epoch, finished_at_ms (`''` = none), node count,
/// then node/record pairs; load count, then per load: object id, at ms; last, the generation
/// (`''` = not checked).
///
/// Writes for a batch that is not stored (never created, or expired) are skipped; returns their
/// batch ids. Dead letters go first so that a batch finishing in the same step expires them too.
const APPLY: &str = r#"
if lost(ARGV[#ARGV]) then return redis.error_reply(LOST) end
local ttl, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
local active = p .. 'active'
local skipped = {}
local i = 4

local ndead = tonumber(ARGV[i]); i = i + 1
for _ = 1, ndead do
  local id, node, at, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  local b = bkey(id)
  if redis.call('EXISTS', b) == 1 then
    redis.call('HSET', b .. ':dlq', node, payload)
    redis.call('ZADD', b .. ':dlqidx', at, node)
    redis.call('ZADD', p .. 'dlq', at, id .. ':' .. node)
    -- The outbox: until the letter is on the dead-letter topic (`dead_letters_sent`).
    redis.call('ZADD', p .. 'dlq:unsent', at, id .. ':' .. node)
    if redis.call('SISMEMBER', active, id) == 0 then
      follow_ttl(id, b .. ':dlq', 0)
      follow_ttl(id, b .. ':dlqidx', grace)
    end
  else
    table.insert(skipped, id)
  end
end

local nretry = tonumber(ARGV[i]); i = i + 1
if nretry > 0 then
  chunked('ZADD', p .. 'retries', ARGV, i, i + 2 * nretry - 1)
  i = i + 2 * nretry
end

local nbatch = tonumber(ARGV[i]); i = i + 1
for _ = 1, nbatch do
  local id, state, epoch, finished = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local nn = tonumber(ARGV[i + 4])
  i = i + 5
  local b = bkey(id)
  if redis.call('EXISTS', b) == 1 then
    redis.call('HSET', b, 'state', state, 'next_epoch', epoch)
    if finished == '' then
      redis.call('HDEL', b, 'finished_at_ms')
    else
      redis.call('HSET', b, 'finished_at_ms', finished)
    end
    if nn > 0 then chunked('HSET', b .. ':nodes', ARGV, i, i + 2 * nn - 1) end
    if state == 'RUNNING' then
      if redis.call('SADD', active, id) == 1 then persist_batch(id) end
    elseif redis.call('SREM', active, id) == 1 then
      expire_batch(id, ttl, grace)
    elseif nn > 0 then
      follow_ttl(id, b .. ':nodes', 0)
    end
  else
    table.insert(skipped, id)
  end
  i = i + 2 * nn
end

local nloaded = tonumber(ARGV[i]); i = i + 1
if nloaded > 0 then
  chunked('HSET', p .. 'loaded', ARGV, i, i + 2 * nloaded - 1)
end
return skipped
"#;

/// `save_trails`.
///
/// ARGV: prefix, batch id, then node/trail pairs, then the generation (`''` = not checked).
/// A batch that is not stored is skipped (returns 0, else 1); the trails expire with the batch.
const TRAILS: &str = r#"
if lost(ARGV[#ARGV]) then return redis.error_reply(LOST) end
local id = ARGV[2]
local b = bkey(id)
if redis.call('EXISTS', b) == 0 then return 0 end
if #ARGV > 3 then chunked('HSET', b .. ':trails', ARGV, 3, #ARGV - 1) end
follow_ttl(id, b .. ':trails', 0)
return 1
"#;

/// `claim_due_retries`, plus a bounded prune of expired batches' index entries.
///
/// ARGV: prefix, now_ms, limit, batches to prune at most, dead-letter entries to unindex at most.
/// Returns member/score pairs of the claimed retries, earliest first.
const CLAIM: &str = r#"
local retries = p .. 'retries'
local due = redis.call('ZRANGEBYSCORE', retries, '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
if #due > 0 then
  local members = {}
  for j = 1, #due, 2 do members[#members + 1] = due[j] end
  chunked('ZREM', retries, members, 1, #members)
end

-- Prune: a finished batch whose keys have expired leaves entries in `batches` and `dlq`.
local budget = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', p .. 'expiring', '-inf', now_ms(), 'LIMIT', 0,
  tonumber(ARGV[4]))
for _, id in ipairs(expired) do
  if budget <= 0 then break end
  local left = redis.call('PTTL', bkey(id))
  if left == -1 then
    redis.call('ZREM', p .. 'expiring', id) -- reopened, it no longer expires
  elseif left == -2 then
    budget = budget - unindex_dead(id, budget)
    if redis.call('EXISTS', bkey(id) .. ':dlqidx') == 0 then
      redis.call('ZREM', p .. 'batches', id)
      redis.call('ZREM', p .. 'expiring', id)
    end
  end
end
return due
"#;

/// `list_batches` and `list_dead_letters`: a page of a sorted set, newest (highest score) first,
/// skipping (and removing) entries whose batch or payload has expired.
///
/// ARGV: prefix, mode (`batches`, `dlq` = every dead letter, `dlq1` = one batch's), zset key
/// suffix, cursor score (`''` = from the newest), cursor member, limit, batch id (`dlq1`).
/// Returns `{next_score, next_member, member, score, payload, member, score, payload, ...}` where
/// `next_score` is `''` at the end; `payload` is `''` for `batches`.
const PAGE: &str = r#"
local mode, zkey = ARGV[2], p .. ARGV[3]
local cursor_score, cursor_member = ARGV[4], ARGV[5]
local limit = tonumber(ARGV[6])
local budget = limit * 4 + 64

local function payload_of(m)
  if mode == 'batches' then
    if redis.call('EXISTS', bkey(m)) == 1 then return '' end
    return false
  elseif mode == 'dlq' then
    local id, node = string.match(m, '^(.*):(%d+)$')
    if not id then return false end
    return redis.call('HGET', bkey(id) .. ':dlq', node)
  else
    return redis.call('HGET', bkey(ARGV[7]) .. ':dlq', m)
  end
end

local rank = 0
if cursor_score ~= '' then
  local r = redis.call('ZREVRANK', zkey, cursor_member)
  if r then
    rank = r + 1
  else
    -- The cursor's entry is gone: continue at its score (entries sharing it may repeat).
    rank = redis.call('ZCOUNT', zkey, '(' .. cursor_score, '+inf')
  end
end

local out = {'', ''}
local found, examined = 0, 0
local stale = {}
local last_m, last_s = nil, nil
local stop = false
while not stop do
  local page = redis.call('ZREVRANGE', zkey, rank, rank + 99, 'WITHSCORES')
  if #page == 0 then break end
  for j = 1, #page, 2 do
    local m, s = page[j], page[j + 1]
    rank = rank + 1
    examined = examined + 1
    local v = payload_of(m)
    if v then
      out[#out + 1] = m; out[#out + 1] = s; out[#out + 1] = v
      found = found + 1
    else
      stale[#stale + 1] = m
    end
    last_m, last_s = m, s
    if found >= limit or examined >= budget then stop = true; break end
  end
end
if last_m and #redis.call('ZREVRANGE', zkey, rank, rank) > 0 then
  out[1], out[2] = last_s, last_m
  -- Keep the cursor's own entry, even if stale, so that the next page finds its rank.
  if stale[#stale] == last_m then stale[#stale] = nil end
end
if #stale > 0 then chunked('ZREM', zkey, stale, 1, #stale) end
return out
"#;

/// A script: its source (sent by `SCRIPT LOAD`) and its SHA1 digest (sent by `EVALSHA`).
pub(crate) struct Lua {
    /// The full source.
    pub(crate) src: String,
    /// Computes the digest.
    pub(crate) script: Script,
}

impl Lua {
    fn new(body: &str) -> Self {
        let src = format!("{PRELUDE}{body}");
        Self {
            script: Script::new(&src),
            src,
        }
    }

    /// The SHA1 digest, hex.
    pub(crate) fn hash(&self) -> &str {
        self.script.get_hash()
    }
}

/// The scripts of the store.
pub(crate) struct Scripts {
    pub(crate) create: Lua,
    pub(crate) apply: Lua,
    pub(crate) claim: Lua,
    pub(crate) page: Lua,
    pub(crate) trails: Lua,
}

impl Scripts {
    /// All of them, for loading.
    pub(crate) fn all(&self) -> [&Lua; 5] {
        [
            &self.create,
            &self.apply,
            &self.claim,
            &self.page,
            &self.trails,
        ]
    }
}

/// Built once per process.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    create: Lua::new(CREATE),
    apply: Lua::new(APPLY),
    claim: Lua::new(CLAIM),
    page: Lua::new(PAGE),
    trails: Lua::new(TRAILS),
});
