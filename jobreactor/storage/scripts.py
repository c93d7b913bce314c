"""The Lua scripts of RedisStorage. Each touches the keys of one hash tag (one owner)."""

from __future__ import annotations

from typing import Final

_LOCK_GRACE_MS: Final = 86_400_000
CLAIM_LOG_MS: Final = 60_000

CLAIM = """
-- KEYS[1] index set, KEYS[2] claim log, KEYS[3..] job hashes; ARGV: the ids, same order.
local done = redis.call('GET', KEYS[2])
if done then return cmsgpack.unpack(done) end
local out = {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = redis.call('HGETALL', KEYS[i + 2])
    redis.call('DEL', KEYS[i + 2])
  end
end
redis.call('SET', KEYS[2], cmsgpack.pack(out), 'PX', ARGV_LOG_MS)
return out
""".replace("ARGV_LOG_MS", str(CLAIM_LOG_MS))

SAVE = """
-- KEYS[1] index set, KEYS[2..] job hashes; ARGV[i] msgpack [id, field1, value1, ...] for
-- KEYS[i + 1]. Atomic: a job is never seen half-written, nor between its DEL and HSET by a
-- claim. DEL first, so fields that went back to None/default don't linger.
for i = 2, #KEYS do
  local flat = cmsgpack.unpack(ARGV[i - 1])
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], unpack(flat, 2))
  redis.call('SADD', KEYS[1], flat[1])
end
return #KEYS - 1
"""

DESTROY = """
-- KEYS[1] index set, KEYS[2..] job hashes; ARGV the ids.
redis.call('DEL', unpack(KEYS, 2))
redis.call('SREM', KEYS[1], unpack(ARGV))
return 1
"""

QUEUE_REMOVE = """
-- KEYS: jobs hash, order zset, sequence; ARGV: the ids. An emptied queue leaves nothing
-- behind: its sequence (no TTL) would otherwise outlive every worker (issue 17).
redis.call('HDEL', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[3]) end
return 1
"""

LOAD_MANY = """
-- KEYS: job hashes. One command for a page of jobs (cheaper to send than HGETALL each).
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

QUEUE_SAVE = """
-- KEYS: jobs hash, order zset, sequence; ARGV: id1, record1, id2, record2, ...
for i = 1, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
  end
end
return 1
"""

ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A lock value is "<token>:<expiry ms>" on Redis's own clock (TIME), 0 meaning never. A value
# written by someone else without that suffix counts as a lock that never expires.
LOCK_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
local holder, expiry = nil, 0
if cur then
  holder, expiry = string.match(cur, '^(.*):(%d+)$')
  if holder then expiry = tonumber(expiry) else holder, expiry = cur, 0 end
end
local live = cur and (expiry == 0 or expiry > now)
"""

LOCK = (
    LOCK_PRELUDE
    + """
if live and holder ~= ARGV[1] then return 0 end
local timeout = tonumber(ARGV[2])
if timeout > 0 then
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', now + timeout),
             'PX', timeout + GRACE_MS)
else
  redis.call('SET', KEYS[1], ARGV[1] .. ':0')
end
return 1
""".replace("GRACE_MS", str(_LOCK_GRACE_MS))
)

UNLOCK = (
    LOCK_PRELUDE
    + """
if not cur or holder ~= ARGV[1] then return 'not_held' end
if not live then return 'expired' end
redis.call('DEL', KEYS[1])
return 'released'
"""
)

LOCK_HOLDER = (
    LOCK_PRELUDE
    + """
if live then return holder end
return false
"""
)


NAMES: Final = (
    "CLAIM",
    "SAVE",
    "DESTROY",
    "QUEUE_REMOVE",
    "LOAD_MANY",
    "QUEUE_SAVE",
    "ACQUIRE",
    "RELEASE",
    "LOCK",
    "UNLOCK",
    "LOCK_HOLDER",
)
