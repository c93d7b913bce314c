"""Where limit slots live: in the node's memory, or in Redis for every node sharing it.

`MemoryLimits` keeps `SlotTable` / `RateLog` (jobreactor/limits.py) per node. `RedisLimits`
runs the same rules in Lua on Redis's clock (TIME), one script per slot, touching the keys of
one hash tag (`Keys.limit`), so it works on a Cluster. A refused acquisition registers the
node as a waiter in the same script; a release returns the waiters, which the node wakes
through the storage's pub/sub commands (storage/wakeups.py). A concurrency slot is a lease:
the holder renews it (`renew`), and a dead holder's slot lapses when its lease ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from redis.exceptions import NoScriptError

from jobreactor.errors import StorageError
from jobreactor.limits import RateLog, SlotRef, SlotTable

if TYPE_CHECKING:
    from jobreactor.storage.redis import RedisStorage

__all__ = ["LimitStore", "MemoryLimits", "RedisLimits", "limit_store_for"]

# A waiter's registration outlives the lease it may have to wait for: a waiting node probes
# again when the earliest holder's lease ends, and registers afresh then.
_WAITER_LEASES: Final = 2

# Calls per pipeline (one loop turn's worth is split into pipelines this long).
_BATCH: Final = 500

# (script name, keys, args, the caller's future)
_Call = tuple[str, list[str], list[Any], "asyncio.Future[Any]"]

# Shared prelude: `now` in ms on Redis's clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: holders, waiters. ARGV: member, limit, lease ms, waiter node.
# Returns -1 when granted, else the ms until the earliest lease ends.
ACQUIRE_SLOT: Final = (
    _NOW
    + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return -1
end
redis.call('ZADD', KEYS[2], now + WAITER_LEASES * lease, ARGV[4])
redis.call('PEXPIRE', KEYS[2], WAITER_LEASES * lease)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
""".replace("WAITER_LEASES", str(_WAITER_LEASES))
)

# KEYS: log, waiters. ARGV: member, limit, period ms, waiter node.
# Returns -1 when granted (the start is logged), else the ms until the window allows one.
ACQUIRE_RATE: Final = (
    _NOW
    + """
local period = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], period)
  return -1
end
redis.call('ZADD', KEYS[2], now + period, ARGV[4])
redis.call('PEXPIRE', KEYS[2], period)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) + period - now)
"""
)

# KEYS: holders (or log), waiters. ARGV: member. Frees the slot (takes the start back) and
# returns the nodes waiting on it, forgetting them: each registers again if refused again.
RELEASE: Final = (
    _NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local waiters = redis.call('ZRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return waiters
"""
)

# KEYS: holders. ARGV: lease ms, members. Extends the leases still held; returns the lost ones.
RENEW: Final = (
    _NOW
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
redis.call('PEXPIRE', KEYS[1], lease)
return lost
"""
)

_SCRIPTS: Final = {
    "ACQUIRE_SLOT": ACQUIRE_SLOT,
    "ACQUIRE_RATE": ACQUIRE_RATE,
    "RELEASE": RELEASE,
    "RENEW": RENEW,
}


class LimitStore(Protocol):
    """Slots of limits. `shared`: other nodes take the same slots (their waiters need waking)."""

    shared: bool

    async def acquire(
        self, slot: SlotRef, member: str, waiter: str, lease_s: float
    ) -> float | None:
        """Take `slot` for `member`: None if granted, else seconds until worth asking again
        (`math.inf`: only a release frees it). A refusal registers `waiter` to be woken."""
        ...

    async def release(self, slot: SlotRef, member: str) -> list[str]:
        """Give the slot back (a rate start: take it back); returns the nodes to wake."""
        ...

    async def renew(self, slot: str, members: Sequence[str], lease_s: float) -> list[str]:
        """Extend these concurrency leases; returns the members that had lost theirs."""
        ...


class MemoryLimits:
    """Per node, in memory: a node's own waiters are woken by the node itself."""

    shared = False

    def __init__(self) -> None:
        self.slots = SlotTable()
        self.rates = RateLog()

    async def acquire(
        self, slot: SlotRef, member: str, waiter: str, lease_s: float
    ) -> float | None:
        limit, now = slot.limit, time.monotonic()
        if limit.kind == "c":
            return self.slots.acquire(slot.name, member, limit.amount, now)
        return self.rates.acquire(slot.name, member, limit.amount, limit.period_s, now)

    async def release(self, slot: SlotRef, member: str) -> list[str]:
        if slot.limit.kind == "c":
            self.slots.release(slot.name, member)
        else:
            self.rates.forget(slot.name, member)
        return []

    async def renew(self, slot: str, members: Sequence[str], lease_s: float) -> list[str]:
        return []  # held until released: a node's memory dies with the node


class RedisLimits:
    """On the node's RedisStorage: its client, key prefix and error mapping.

    Calls made in one loop turn go out together, in one pipeline (EVALSHA each): a thousand
    jobs starting at once cost a few round trips, not a thousand (nor a thousand connections).
    """

    shared = True

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        self._shas: dict[str, str] = {}
        self._client: Any = None
        self._batch: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _run(self, name: str, keys: list[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((name, keys, list(args), future))
        if len(self._batch) == 1:
            loop.call_soon(self._send_soon)
        return await future

    def _send_soon(self) -> None:
        batch, self._batch = self._batch, []
        for start in range(0, len(batch), _BATCH):
            task = asyncio.get_running_loop().create_task(self._send(batch[start : start + _BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            with self._storage._errors("limits"):
                client = await self._storage._redis()
                if client is not self._client:  # first use, or a new client: load the scripts
                    await self._load(client)
                results = await self._pipeline(client, batch)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # the server restarted empty: load them again, redo those calls
                    await self._load(client)
                    again = await self._pipeline(client, [batch[i] for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
        except Exception as exc:  # noqa: BLE001 (StorageError, mapped above, or a bug: all hear it)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (name, _, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(StorageError(f"redis refused limit {name.lower()}: {result}"))
            else:
                future.set_result(result)

    async def _load(self, client: Any) -> None:
        # SCRIPT LOAD goes to every primary of a cluster.
        self._shas = {name: await client.script_load(text) for name, text in _SCRIPTS.items()}
        self._client = client

    async def _pipeline(self, client: Any, batch: list[_Call]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for name, keys, args, _ in batch:
                pipe.evalsha(self._shas[name], len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def acquire(
        self, slot: SlotRef, member: str, waiter: str, lease_s: float
    ) -> float | None:
        limit = slot.limit
        if limit.kind == "c":
            name, window_ms = "ACQUIRE_SLOT", _ms(lease_s)
        else:
            name, window_ms = "ACQUIRE_RATE", _ms(limit.period_s)
        keys = list(self._storage.keys.limit(slot.name))
        wait_ms = int(await self._run(name, keys, [member, limit.amount, window_ms, waiter]))
        return None if wait_ms < 0 else wait_ms / 1000.0

    async def release(self, slot: SlotRef, member: str) -> list[str]:
        keys = list(self._storage.keys.limit(slot.name))
        waiters: list[str] = await self._run("RELEASE", keys, [member])
        return waiters

    async def renew(self, slot: str, members: Sequence[str], lease_s: float) -> list[str]:
        holders, _ = self._storage.keys.limit(slot)
        lost: list[str] = await self._run("RENEW", [holders], [_ms(lease_s), *members])
        return lost


def _ms(seconds: float) -> int:
    return 0 if math.isinf(seconds) else max(1, round(seconds * 1000))


def limit_store_for(storage: Any) -> LimitStore:
    """Redis storage: limits across every node sharing it; otherwise per node, in memory."""
    if getattr(storage, "kind", None) == "redis" and hasattr(storage, "keys"):
        return RedisLimits(storage)
    return MemoryLimits()
