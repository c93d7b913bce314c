"""The Lua scripts of RedisStorage. Each touches the keys of one hash tag (one owner).

A node's record writes (save, destroy, claim) keep its status indexes too: they are in
storage/status_index.py.
"""

from __future__ import annotations

from typing import Final

_LOCK_GRACE_MS: Final = 86_400_000
CLAIM_LOG_MS: Final = 60_000

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
-- KEYS: jobs hash, order zset, sequence, withdrawn zset; ARGV: id1, record1, id2, record2, ...
-- A withdrawn id (its enqueue timed out; the caller was told it won't run) is not saved.
local saved = 0
for i = 1, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[4], ARGV[i]) then
    saved = saved + 1
    if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
      redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
    end
  end
end
return saved
"""

WITHDRAWN_KEPT_MS: Final = 86_400_000

QUEUE_WITHDRAW = """
-- KEYS: jobs hash, order zset, withdrawn zset; ARGV: the ids. Entries older than a day go.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HDEL', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
for i = 1, #ARGV do redis.call('ZADD', KEYS[3], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - KEPT_MS)
return 1
""".replace("KEPT_MS", str(WITHDRAWN_KEPT_MS))

QUEUE_UPDATE = """
-- KEYS: jobs hash, order zset, sequence, withdrawn zset. ARGV: the number of saves, the number
-- of removals, then id/record pairs to save, ids to remove, ids to withdraw (the rest).
-- A journal's updates of one loop turn in one call: QUEUE_SAVE, QUEUE_REMOVE, QUEUE_WITHDRAW.
local saves, removals = tonumber(ARGV[1]), tonumber(ARGV[2])
local i = 3
for _ = 1, saves do
  if not redis.call('ZSCORE', KEYS[4], ARGV[i]) then
    if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
      redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
    end
  end
  i = i + 2
end
for j = i, i + removals - 1 do
  redis.call('HDEL', KEYS[1], ARGV[j])
  redis.call('ZREM', KEYS[2], ARGV[j])
end
i = i + removals
if i <= #ARGV then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for j = i, #ARGV do
    redis.call('HDEL', KEYS[1], ARGV[j])
    redis.call('ZREM', KEYS[2], ARGV[j])
    redis.call('ZADD', KEYS[4], now, ARGV[j])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - KEPT_MS)
end
if i > 3 + 2 * saves and redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[3]) end
return 1
""".replace("KEPT_MS", str(WITHDRAWN_KEPT_MS))

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
    "QUEUE_REMOVE",
    "LOAD_MANY",
    "QUEUE_SAVE",
    "QUEUE_WITHDRAW",
    "QUEUE_UPDATE",
    "ACQUIRE",
    "RELEASE",
    "LOCK",
    "UNLOCK",
    "LOCK_HOLDER",
)
