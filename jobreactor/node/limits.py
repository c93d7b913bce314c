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
The attempt path calls `acquire` (guards.enter), `release` (guards.release) and `forget`
(Attempts._forget); nothing else here is called from outside but `wake` (a command arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from jobreactor.errors import StorageError
from jobreactor.limits import MAX_LABELLED_KEYS, SlotRef, slots_for
from jobreactor.storage.limits import LimitStore, limit_store_for

if TYPE_CHECKING:
    from jobreactor.definitions import JobDefinition
    from jobreactor.node.attempts import Held
    from jobreactor.node.node import Node

__all__ = ["WAKE_PREFIX", "NodeLimits", "run_now"]

logger = logging.getLogger("jobreactor.node")

T = TypeVar("T")

# Sent on a node's commands channel to wake the jobs waiting on one slot. Job ids never
# start with "~" (they are `<prefix><hex>`), so the listener tells the two apart.
WAKE_PREFIX: Final = "~limit:"


@dataclass(slots=True)
class _Gate:
    slot: SlotRef
    queue: deque[str] = field(default_factory=deque)
    probe: str | None = None  # the job first in line (refused, or promoted from the queue)
    sleeping: bool = False  # the probe waits for a wake or a timer (not asking the store)
    rewake: bool = False  # a wake came while jobs were asking: a refused one asks again
    inflight: int = 0  # jobs asking the store for this slot now

    def blocks(self, job_id: str) -> bool:
        return (self.probe is not None and self.probe != job_id) or (
            self.probe is None and bool(self.queue)
        )

    @property
    def waiting(self) -> int:
        return len(self.queue) + (1 if self.sleeping else 0)


class NodeLimits:
    """Gates of one node, over a LimitStore (memory: per node; Redis: across nodes)."""

    def __init__(self, node: Node, lease_s: float, store: LimitStore | None = None) -> None:
        self._node = node
        self._store = store if store is not None else limit_store_for(node.storage)
        self._lease_s = lease_s
        self._gates: dict[str, _Gate] = {}
        self._where: dict[str, set[str]] = {}  # job id -> gates it is probe of or queued in
        self._holding: dict[str, set[str]] = {}  # slot name -> members this node holds
        self._renewal: asyncio.TimerHandle | None = None

    # --- the attempt path -----------------------------------------------------------------------

    @staticmethod
    def slots(held: Held, definition: JobDefinition) -> list[SlotRef]:
        """The slots this attempt needs. Raises LimitKeyError (an arg the key names is missing)."""
        return slots_for(held.record.name, definition.limits, held.record.args)

    async def acquire(self, held: Held, slots: list[SlotRef]) -> bool:
        """Take every slot (its run slot is taken): True to start; False: it waits (no run slot).

        While nobody waits on a slot, any number of jobs ask at once; once one is refused, the
        others line up behind it (FIFO) and ask one at a time, as slots free up.
        Raises StorageError (nothing is held then; the caller postpones the job).
        """
        job_id = held.record.id
        for slot in slots:
            gate = self._gates.get(slot.name)
            if gate is not None and gate.blocks(job_id):
                self._queue(held, gate)
                return False
        gates = [self._gate(slot) for slot in slots]
        taken: list[SlotRef] = []
        refused: tuple[_Gate, float] | None = None
        try:
            for slot, gate in zip(slots, gates, strict=True):
                gate.inflight += 1
                try:
                    wait_s = await self._store.acquire(
                        slot, self._member(held, slot), self._node.name, self._lease_s
                    )
                finally:
                    gate.inflight -= 1
                if wait_s is not None:
                    refused = (gate, wait_s)
                    break
                taken.append(slot)
        except StorageError:
            self._leave_all(job_id)
            await self._give_back(held, taken)
            raise
        finally:
            for gate in gates:
                self._drop_if_idle(gate)
        if refused is not None:
            self._refused(held, *refused)  # before any await: a wake now must find it waiting
            await self._give_back(held, taken)
            return False
        concurrency = [slot for slot in taken if slot.limit.kind == "c"]
        for slot in concurrency:
            self._hold(slot.name, job_id)
        held.limit_slots = concurrency or None
        self._leave_all(job_id)
        return True

    @property
    def local(self) -> bool:
        """The store is this node's memory: `acquire` and `release` never suspend."""
        return not self._store.shared

    def release_now(self, held: Held) -> None:
        """`release` without a task, for a local store (the attempt path's fast path)."""
        run_now(self.release(held))

    async def release(self, held: Held) -> None:
        """The attempt ended: free its concurrency slots and wake who waits on them."""
        slots, held.limit_slots = held.limit_slots or [], None
        for slot in slots:
            self._unhold(slot.name, held.record.id)
        await self._give_back(held, slots)

    def forget(self, job_id: str) -> None:
        """The job left the node (done, cancelled, handed back, dropped) while maybe waiting."""
        for name in self._where.pop(job_id, ()):
            gate = self._gates.get(name)
            if gate is None:
                continue
            if gate.probe == job_id:
                self._clear_probe(gate)
            else:
                with contextlib.suppress(ValueError):
                    gate.queue.remove(job_id)
                self._drop_if_idle(gate)

    def is_waiting(self, job_id: str) -> bool:
        """Waiting for a slot (queued, or a sleeping probe): due, but not in the ready queue."""
        return any(
            (gate := self._gates.get(name)) is not None and (gate.probe != job_id or gate.sleeping)
            for name in self._where.get(job_id, ())
        )

    # --- wake-ups -------------------------------------------------------------------------------

    def wake(self, name: str) -> None:
        """A slot of `name` freed up (or may have): let its next job ask."""
        gate = self._gates.get(name)
        if gate is None:
            return
        if gate.probe is None:
            if gate.inflight:
                gate.rewake = True
            self._promote(gate)
        elif gate.sleeping:
            gate.sleeping = False
            held = self._node._jobs.get(gate.probe)
            if held is None:
                self._clear_probe(gate)
                return
            self._node._timers.cancel(gate.probe)
            self._make_ready(held)
        else:
            gate.rewake = True

    def wake_all(self) -> None:
        """After a pub/sub resubscription (wake-ups may have been lost): every gate asks again."""
        for name in list(self._gates):
            self.wake(name)

    # --- introspection ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Waiting jobs per (job, key), the busiest first; beyond MAX_LABELLED_KEYS: "other"."""
        rows = sorted(
            ((gate.waiting, gate.slot) for gate in self._gates.values() if gate.waiting),
            key=lambda row: -row[0],
        )
        out = [
            {"job_name": slot.job, "limit_key": slot.label, "waiting": n}
            for n, slot in rows[:MAX_LABELLED_KEYS]
        ]
        rest: dict[str, int] = {}
        for n, slot in rows[MAX_LABELLED_KEYS:]:
            rest[slot.job] = rest.get(slot.job, 0) + n
        out += [{"job_name": job, "limit_key": "other", "waiting": n} for job, n in rest.items()]
        holding = sum(len(members) for members in self._holding.values())
        return {"waiting": out, "holding": holding, "shared": self._store.shared}

    def close(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None

    # --- gates ----------------------------------------------------------------------------------

    @staticmethod
    def _member(held: Held, slot: SlotRef) -> str:
        # A concurrency slot is the job's (a resumed job finds its own slot again); a rate
        # start is one attempt's.
        job_id = held.record.id
        return job_id if slot.limit.kind == "c" else f"{job_id}:{held.record.attempt + 1}"

    def _gate(self, slot: SlotRef) -> _Gate:
        gate = self._gates.get(slot.name)
        if gate is None:
            gate = self._gates[slot.name] = _Gate(slot)
        return gate

    def _queue(self, held: Held, gate: _Gate) -> None:
        job_id = held.record.id
        name = gate.slot.name
        queued = name in self._where.get(job_id, ()) and gate.probe != job_id
        if not queued:  # (a job woken from storage may come back while it is queued)
            self._leave_all(job_id)
            gate.queue.append(job_id)
            self._where.setdefault(job_id, set()).add(name)
        self._park(held)

    def _refused(self, held: Held, gate: _Gate, wait_s: float) -> None:
        """Refused a slot of `gate`: its probe sleeps until a wake or `wait_s`; others queue."""
        job_id = held.record.id
        for name in list(self._where.get(job_id, ())):
            if name != gate.slot.name:
                self._leave(job_id, name)
        if gate.probe not in (None, job_id):
            self._queue(held, gate)  # another refused job is the probe already: line up
            return
        self._gates[gate.slot.name] = gate
        gate.probe = job_id
        self._where.setdefault(job_id, set()).add(gate.slot.name)
        rewake, gate.rewake = gate.rewake, False
        gate.sleeping = not rewake
        self._park(held)
        if self._node._jobs.get(job_id) is not held:
            return  # cancelled while it asked: forgotten already
        if rewake:
            self._make_ready(held)  # a slot freed while it asked: ask again now
        elif not math.isinf(wait_s):
            self._node.sleep_until(held, time.monotonic() + wait_s)

    def _park(self, held: Held) -> None:
        """Give back the run slot (and credit) it took to ask; a cancelled one ends here."""
        self._node._end_attempt(held, retrying=True)
        if held.cancel_requested:
            held.cancel_requested = False
            self._node._cancel_now(held)

    def _leave_all(self, job_id: str) -> None:
        for name in list(self._where.get(job_id, ())):
            self._leave(job_id, name)

    def _leave(self, job_id: str, name: str) -> None:
        names = self._where.get(job_id)
        if names is not None:
            names.discard(name)
            if not names:
                del self._where[job_id]
        gate = self._gates.get(name)
        if gate is not None and gate.probe == job_id:
            self._clear_probe(gate)

    def _clear_probe(self, gate: _Gate) -> None:
        gate.probe, gate.sleeping, gate.rewake = None, False, False
        self._promote(gate)

    def _promote(self, gate: _Gate) -> None:
        """The next queued job becomes the gate's probe and goes to the ready queue."""
        while gate.queue:
            job_id = gate.queue.popleft()
            held = self._node._jobs.get(job_id)
            if held is None or held.running:
                self._leave(job_id, gate.slot.name)
                continue
            gate.probe = job_id
            self._make_ready(held)
            return
        self._drop_if_idle(gate)

    def _drop_if_idle(self, gate: _Gate) -> None:
        if gate.probe is None and not gate.queue and not gate.inflight:
            self._gates.pop(gate.slot.name, None)

    def _make_ready(self, held: Held) -> None:
        self._node._ready.push(held.record.id, held.record.priority)
        self._node._kick()

    # --- holding, releasing, renewing -------------------------------------------------------------

    async def _give_back(self, held: Held, slots: list[SlotRef]) -> None:
        for slot in slots:
            try:
                waiters = await self._store.release(slot, self._member(held, slot))
            except StorageError as exc:
                # A concurrency slot is a lease: it lapses by itself; waiters' timers see that.
                logger.warning(
                    "job %s: could not release limit %s: %s", held.record.id, slot.name, exc
                )
                waiters = []
            self.wake(slot.name)
            for other in set(waiters) - {self._node.name}:
                await self._send_wake(other, slot.name)

    async def _send_wake(self, node: str, name: str) -> None:
        send = getattr(self._node.storage, "send_command", None)
        if send is None:
            return
        try:
            await send(node, WAKE_PREFIX + name)
        except StorageError as exc:
            logger.warning("could not wake node %s for limit %s: %s", node, name, exc)

    def _hold(self, name: str, member: str) -> None:
        self._holding.setdefault(name, set()).add(member)
        if self._store.shared and self._renewal is None:
            self._renewal = self._node.loop.call_later(self._lease_s / 3, self._renew_due)

    def _unhold(self, name: str, member: str) -> None:
        members = self._holding.get(name)
        if members is not None:
            members.discard(member)
            if not members:
                del self._holding[name]

    def _renew_due(self) -> None:
        self._renewal = None
        if self._holding:
            self._node._spawn(self._renew())
            self._renewal = self._node.loop.call_later(self._lease_s / 3, self._renew_due)

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
    raise RuntimeError("run_now: the coroutine suspended; use it with a local store only")
