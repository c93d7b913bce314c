"""A node's side of limits: who may take a slot now, who waits, and who wakes them.

Per slot name a *gate*: while no job of it was refused, any number ask the store at once.
A refused one becomes the gate's *probe* (sleeping until a wake or a timer); jobs that come
after line up behind it in a FIFO queue and ask one at a time as slots free up. A waiting
job holds no run slot and no distributor credit (other work runs meanwhile); it is still
held by the node. It is woken, never polled for:
- a release of that slot (on this node at once; on another node sharing Redis through the
  storage's pub/sub commands, `WAKE_PREFIX + slot`);
- a timer on the node's heap for the instant the store named: the end of the rate window, or
  of the earliest holder's lease (so a dead holder's slot is noticed when its lease ends).
Granted concurrency slots are leases, renewed every third of `limit_lease` while held.
The attempt path calls `acquire` (guards.py), `release` (release.py) and `forget` (settle.py);
nothing else here is called from outside but `wake` (a command arrived). The waiting side (gates)
is node/gates.py; this file asks the store and keeps the leases of the slots taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar, cast

from jobreactor.definitions import JobDefinition
from jobreactor.errors import StorageError
from jobreactor.limits import SlotRef, slots_for
from jobreactor.node.gates import Gate, Gates
from jobreactor.node.held import HeldJob
from jobreactor.storage.base import Storage
from jobreactor.storage.limits import LimitStore, limit_store_for

__all__ = ["WAKE_PREFIX", "NodeLimits", "run_now"]

logger = logging.getLogger("jobreactor.node")

T = TypeVar("T")
Spawn = Callable[[Coroutine[Any, Any, Any]], object]

# Sent on a node's commands channel to wake the jobs waiting on one slot. Job ids never
# start with "~" (they are `<prefix><hex>`), so the listener tells the two apart.
WAKE_PREFIX: Final = "~limit:"


class NodeLimits:
    """Slots of one node's jobs, over a LimitStore (memory: per node; Redis: across nodes)."""

    def __init__(
        self,
        node_name: str,
        storage: Storage,
        lease_s: float,
        *,
        gates: Gates,
        spawn: Spawn,
        loop: asyncio.AbstractEventLoop,
        store: LimitStore | None = None,
    ) -> None:
        self._name = node_name
        self._storage = storage
        self._store = store if store is not None else limit_store_for(storage)
        self.gates = gates
        self._leases = _Leases(self._store, lease_s, spawn, loop)
        self._lease_s = lease_s

    # --- the attempt path -----------------------------------------------------------------------

    @staticmethod
    def slots(held: HeldJob, definition: JobDefinition) -> list[SlotRef]:
        """The slots this attempt needs. Raises LimitKeyError (an arg the key names is missing)."""
        return slots_for(held.record.name, definition.limits, held.record.args)

    async def acquire(self, held: HeldJob, slots: list[SlotRef]) -> bool:
        """Take every slot (its run slot is taken): True to start; False: it waits (no run slot).

        While nobody waits on a slot, any number of jobs ask at once; once one is refused, the
        others line up behind it (FIFO) and ask one at a time, as slots free up.
        Raises StorageError (nothing is held then; the caller postpones the job).
        """
        job_id = held.record.id
        gates = self.gates
        blocking = gates.blocking(job_id, slots)
        if blocking is not None:
            gates.queue(held, blocking)
            return False
        taken: list[SlotRef] = []
        refused: tuple[Gate, float] | None = None
        asked = [gates.gate(slot) for slot in slots]
        try:
            for slot, gate in zip(slots, asked, strict=True):
                gate.inflight += 1
                try:
                    wait_s = await self._store.acquire(
                        slot, self._member(held, slot), self._name, self._lease_s
                    )
                finally:
                    gate.inflight -= 1
                if wait_s is not None:
                    refused = (gate, wait_s)
                    break
                taken.append(slot)
        except StorageError:
            gates.leave_all(job_id)
            await self._give_back(held, taken)
            raise
        finally:
            for gate in asked:
                gates.drop_if_idle(gate)
        if refused is not None:
            gates.refused(held, *refused)  # before any await: a wake now must find it waiting
            await self._give_back(held, taken)
            return False
        concurrency = [slot for slot in taken if slot.limit.kind == "c"]
        for slot in concurrency:
            self._leases.hold(slot.name, job_id)
        held.limit_slots = concurrency or None
        gates.leave_all(job_id)
        return True

    @property
    def local(self) -> bool:
        """The store is this node's memory: `acquire` and `release` never suspend."""
        return not self._store.shared

    def release_now(self, held: HeldJob) -> None:
        """`release` without a task, for a local store (the attempt path's fast path)."""
        run_now(self.release(held))

    async def release(self, held: HeldJob) -> None:
        """The attempt ended: free its concurrency slots and wake who waits on them."""
        slots, held.limit_slots = held.limit_slots or [], None
        for slot in slots:
            self._leases.unhold(slot.name, held.record.id)
        await self._give_back(held, slots)

    def forget(self, job_id: str) -> None:
        """The job left the node (done, cancelled, handed back, dropped) while maybe waiting."""
        self.gates.forget(job_id)

    def is_waiting(self, job_id: str) -> bool:
        return self.gates.is_waiting(job_id)

    def wake(self, name: str) -> None:
        """A slot of `name` freed up (or may have): let its next job ask."""
        self.gates.wake(name)

    def wake_all(self) -> None:
        """After a pub/sub resubscription (wake-ups may have been lost): every gate asks again."""
        self.gates.wake_all()

    def stats(self) -> dict[str, Any]:
        return {
            "waiting": self.gates.waiting_stats(),
            "holding": self._leases.holding,
            "shared": self._store.shared,
        }

    def close(self) -> None:
        self._leases.close()

    @staticmethod
    def _member(held: HeldJob, slot: SlotRef) -> str:
        # A concurrency slot is the job's (a resumed job finds its own slot again); a rate
        # start is one attempt's.
        job_id = held.record.id
        return job_id if slot.limit.kind == "c" else f"{job_id}:{held.record.attempt + 1}"

    async def _give_back(self, held: HeldJob, slots: list[SlotRef]) -> None:
        for slot in slots:
            try:
                waiters = await self._store.release(slot, self._member(held, slot))
            except StorageError as exc:
                # A concurrency slot is a lease: it lapses by itself; waiters' timers see that.
                logger.warning(
                    "job %s: could not release limit %s: %s", held.record.id, slot.name, exc
                )
                waiters = []
            self.gates.wake(slot.name)
            for other in set(waiters) - {self._name}:
                await self._send_wake(other, slot.name)

    async def _send_wake(self, node: str, name: str) -> None:
        send = getattr(self._storage, "send_command", None)
        if send is None:
            return
        try:
            await send(node, WAKE_PREFIX + name)
        except StorageError as exc:
            logger.warning("could not wake node %s for limit %s: %s", node, name, exc)


class _Leases:
    """The concurrency slots this node holds, renewed every third of `limit_lease`."""

    def __init__(
        self, store: LimitStore, lease_s: float, spawn: Spawn, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._store = store
        self._lease_s = lease_s
        self._spawn = spawn
        self._loop = loop
        self._holding: dict[str, set[str]] = {}  # slot name -> members this node holds
        self._renewal: asyncio.TimerHandle | None = None

    @property
    def holding(self) -> int:
        return sum(len(members) for members in self._holding.values())

    def hold(self, name: str, member: str) -> None:
        self._holding.setdefault(name, set()).add(member)
        if self._store.shared and self._renewal is None:
            self._renewal = self._loop.call_later(self._lease_s / 3, self._renew_due)

    def unhold(self, name: str, member: str) -> None:
        members = self._holding.get(name)
        if members is not None:
            members.discard(member)
            if not members:
                del self._holding[name]

    def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None

    def _renew_due(self) -> None:
        self._renewal = None
        if self._holding:
            self._spawn(self._renew())
            self._renewal = self._loop.call_later(self._lease_s / 3, self._renew_due)

    async def _renew(self) -> None:
        for name, members in list(self._holding.items()):
            try:
                lost = await self._store.renew(name, sorted(members), self._lease_s)
            except StorageError as exc:
                logger.warning(
                    "could not renew limit %s (lease %.1fs): %s", name, self._lease_s, exc
                )
                continue
            lost = [m for m in lost if m in self._holding.get(name, ())]  # not released since
            if lost:
                logger.warning(
                    "limit %s: lease of job(s) %s ran out before renewal (node stalled longer "
                    "than limit_lease=%.1fs?); another job may have taken the slot",
                    name,
                    ", ".join(lost),
                    self._lease_s,
                )


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a local store's) to its end, here and now."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast("T", done.value)
    coro.close()
    raise StorageError("run_now: the limit store suspended; use it with a local store only")
