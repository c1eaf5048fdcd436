//! The Lua scripts of the Redis engine. Each touches keys of one channel only (all hash-tagged
//! `{channel}`), so each runs atomically on one Redis (Cluster) node.

/// Publish: get or create the epoch, assign the next offset, append to the history stream
/// (bounded by size, with a TTL) unless history is off, and publish the envelope on the
/// channel's pub/sub (`SPUBLISH` in Cluster mode). With an idempotency key (`ARGV[8]` > 0),
/// a result saved under it is returned instead of publishing again, and a new result is saved
/// for `ARGV[8]` seconds: the script is atomic, so concurrent duplicates publish once.
///
/// KEYS: stream, meta, idempotency result. ARGV: publication bytes, history size, history
/// TTL (s), meta TTL (s), candidate epoch, pub/sub channel, "1" for SPUBLISH, idempotency TTL
/// (s, "0": no key).
/// Returns `{offset, epoch}`.
pub const PUBLISH: &str = r#"
if ARGV[8] ~= '0' then
  local saved = redis.call('hmget', KEYS[3], 'o', 'e')
  if saved[1] then
    return {tonumber(saved[1]), saved[2]}
  end
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[4])
local kind = 'q'
if tonumber(ARGV[2]) > 0 then
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], tostring(offset) .. '-1', 'd', ARGV[1])
  redis.call('expire', KEYS[1], ARGV[3])
  kind = 'p'
end
local message = kind .. tostring(offset) .. ':' .. epoch .. ':' .. ARGV[1]
if ARGV[7] == '1' then
  redis.call('spublish', ARGV[6], message)
else
  redis.call('publish', ARGV[6], message)
end
if ARGV[8] ~= '0' then
  redis.call('hset', KEYS[3], 'o', offset, 'e', epoch)
  redis.call('expire', KEYS[3], ARGV[8])
end
return {offset, epoch}
"#;

/// Stream position and (optionally) history: get or create the epoch, then read the stream.
///
/// KEYS: stream, meta. ARGV: candidate epoch, meta TTL (s), mode ("0" none, "1" all oldest
/// first, "2" the newest `ARGV[3]` newest first, "3" the oldest `ARGV[3]`).
/// Returns `{top, epoch, entries}` where entries are `[id, [field, value]]`.
pub const POSITION: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('expire', KEYS[2], ARGV[2])
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local entries = {}
if ARGV[3] == '1' then
  entries = redis.call('xrange', KEYS[1], '-', '+')
elseif ARGV[3] == '2' then
  entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', ARGV[4])
elseif ARGV[3] == '3' then
  entries = redis.call('xrange', KEYS[1], '-', '+', 'COUNT', ARGV[4])
end
return {top, epoch, entries}
"#;

/// Presence add: KEYS presence data, presence expiry; ARGV client id, info bytes, expire-at
/// (unix s), key TTL (s).
pub const PRESENCE_ADD: &str = r#"
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
redis.call('expire', KEYS[1], ARGV[4])
redis.call('expire', KEYS[2], ARGV[4])
return 1
"#;

/// Presence remove: KEYS presence data, presence expiry; ARGV client id.
pub const PRESENCE_REMOVE: &str = r#"
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
"#;

/// Presence read: drops expired entries, then returns the hash as a flat list.
/// KEYS presence data, presence expiry; ARGV now (unix s).
pub const PRESENCE_GET: &str = r#"
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
for _, client in ipairs(expired) do
  redis.call('hdel', KEYS[1], client)
end
redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1])
return redis.call('hgetall', KEYS[1])
"#;
