"""Where limit slots live: in the node's memory, or in Redis for every node sharing it.

`MemoryLimits` keeps `SlotTable` / `RateLog` (jobreactor/limits.py) per node. `RedisLimits`
(storage/redis_limits.py, imported for Redis storage only) runs the same rules in Lua
(storage/limit_scripts.py) on Redis's clock, each call on the keys of one slot's hash tag
(`Keys.limit`), so it works on a Cluster. A refused acquisition registers the node as a
waiter in the same script; a release returns the waiters, which the node wakes through the
storage's pub/sub commands (storage/wakeups.py). A concurrency slot is a lease: the holder
renews it (`renew`), and a dead holder's slot lapses when its lease ends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from jobreactor.limits import RateLog, SlotRef, SlotTable

__all__ = ["LimitStore", "MemoryLimits", "limit_store_for"]


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


def limit_store_for(storage: Any) -> LimitStore:
    """Redis storage: limits across every node sharing it; otherwise per node, in memory."""
    if getattr(storage, "kind", None) == "redis" and hasattr(storage, "keys"):
        from jobreactor.storage.redis_limits import RedisLimits  # imports redis-py

        return RedisLimits(storage)
    return MemoryLimits()
