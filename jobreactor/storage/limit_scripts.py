"""The Lua of limits (storage/limits.py). Each script touches one slot's keys, one hash tag:
KEYS[1] its holders (concurrency: member -> lease expiry ms) or its start log (rate: member ->
start ms), KEYS[2] the nodes waiting on it (node -> registration expiry ms). Times are on
Redis's clock (TIME), so the nodes' clocks don't matter.

The acquiring scripts take many members of one slot at once (the jobs of one loop turn) and
answer per member: -1 granted, else the ms until asking again is worth it. A key's expiry is
only ever extended, so nodes configured with different leases can't cut each other's short.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE_RATE", "ACQUIRE_SLOT", "RELEASE", "RENEW", "SCRIPTS"]

# A waiter's registration outlives the lease it may have to wait for: a waiting node asks
# again when the earliest holder's lease ends, and registers afresh then.
WAITER_LEASES: Final = 2

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function extend(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl < ms then redis.call('PEXPIRE', key, ms) end
end
local function refuse(wait_ms, keep_ms)
  extend(KEYS[2], keep_ms)
  redis.call('ZADD', KEYS[2], now + keep_ms, ARGV[3])
  return math.max(1, wait_ms)
end
"""

# ARGV: limit, lease ms, waiter node, members...
ACQUIRE_SLOT: Final = (
    _PRELUDE
    + """
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) or redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
    extend(KEYS[1], lease)
    out[#out + 1] = -1
  else
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    out[#out + 1] = refuse(tonumber(first[2]) - now, WAITERS * lease)
  end
end
return out
""".replace("WAITERS", str(WAITER_LEASES))
)

# ARGV: limit, period ms, waiter node, members...
ACQUIRE_RATE: Final = (
    _PRELUDE
    + """
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local out = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    out[#out + 1] = -1
  elseif redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    extend(KEYS[1], period)
    out[#out + 1] = -1
  else
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    out[#out + 1] = refuse(tonumber(first[2]) + period - now, period)
  end
end
return out
"""
)

# ARGV: members. Frees their slots (takes their starts back) and returns the nodes waiting,
# forgetting them: each registers again if refused again.
RELEASE: Final = (
    _PRELUDE
    + """
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local waiters = redis.call('ZRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return waiters
"""
)

# ARGV: lease ms, members. Extends the leases still held; returns the members that lost theirs.
RENEW: Final = (
    _PRELUDE
    + """
local lease = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if expiry and tonumber(expiry) > now then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
extend(KEYS[1], lease)
return lost
"""
)

SCRIPTS: Final = {
    "ACQUIRE_SLOT": ACQUIRE_SLOT,
    "ACQUIRE_RATE": ACQUIRE_RATE,
    "RELEASE": RELEASE,
    "RENEW": RENEW,
}
