"""The waiting side of a node's limits: per slot name a *gate* (see node/limits.py).

While no job of a gate was refused, any number ask the store at once. A refused one becomes the
gate's *probe* (sleeping until a wake or a timer); jobs that come after line up behind it in a
FIFO queue and ask one at a time as slots free up. A waiting job holds no run slot and no
distributor credit (other work runs meanwhile); it is still held by the node. Pure
bookkeeping: it talks to the node only through the callbacks it is built with.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobreactor.limits import MAX_LABELLED_KEYS, SlotRef
from jobreactor.node.held import HeldJob

Lookup = Callable[[str], HeldJob | None]
Act = Callable[[HeldJob], None]


@dataclass(slots=True)
class Gate:
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


class Gates:
    """Who waits for which slot, in what order, and who is woken next."""

    def __init__(
        self,
        *,
        lookup: Lookup,
        make_ready: Act,
        sleep_until: Callable[[HeldJob, float], None],
        park: Act,
        unschedule: Callable[[str], object],
    ) -> None:
        self._lookup = lookup  # a held (unpacked) job by id
        self._make_ready = make_ready  # to the ready queue, now
        self._sleep_until = sleep_until  # on the timer heap until a monotonic time
        self._park = park  # give back the run slot it took to ask (and end it if cancelled)
        self._unschedule = unschedule  # off the timer heap
        self._gates: dict[str, Gate] = {}
        self._where: dict[str, set[str]] = {}  # job id -> gates it is probe of or queued in

    def blocking(self, job_id: str, slots: list[SlotRef]) -> Gate | None:
        """The gate of `slots` that `job_id` must line up at, if any."""
        for slot in slots:
            gate = self._gates.get(slot.name)
            if gate is not None and gate.blocks(job_id):
                return gate
        return None

    def gate(self, slot: SlotRef) -> Gate:
        gate = self._gates.get(slot.name)
        if gate is None:
            gate = self._gates[slot.name] = Gate(slot)
        return gate

    def queue(self, held: HeldJob, gate: Gate) -> None:
        job_id = held.record.id
        name = gate.slot.name
        queued = name in self._where.get(job_id, ()) and gate.probe != job_id
        if not queued:  # (a job woken from storage may come back while it is queued)
            self.leave_all(job_id)
            gate.queue.append(job_id)
            self._where.setdefault(job_id, set()).add(name)
        self._park(held)

    def refused(self, held: HeldJob, gate: Gate, wait_s: float) -> None:
        """Refused a slot of `gate`: its probe sleeps until a wake or `wait_s`; others queue."""
        job_id = held.record.id
        for name in list(self._where.get(job_id, ())):
            if name != gate.slot.name:
                self._leave(job_id, name)
        if gate.probe not in (None, job_id):
            self.queue(held, gate)  # another refused job is the probe already: line up
            return
        self._gates[gate.slot.name] = gate
        gate.probe = job_id
        self._where.setdefault(job_id, set()).add(gate.slot.name)
        rewake, gate.rewake = gate.rewake, False
        gate.sleeping = not rewake
        self._park(held)
        if self._lookup(job_id) is not held:
            return  # cancelled while it asked: forgotten already
        if rewake:
            self._make_ready(held)  # a slot freed while it asked: ask again now
        elif not math.isinf(wait_s):
            self._sleep_until(held, time.monotonic() + wait_s)

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
                self.drop_if_idle(gate)

    def is_waiting(self, job_id: str) -> bool:
        """Waiting for a slot (queued, or a sleeping probe): due, but not in the ready queue."""
        return any(
            (gate := self._gates.get(name)) is not None and (gate.probe != job_id or gate.sleeping)
            for name in self._where.get(job_id, ())
        )

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
            held = self._lookup(gate.probe)
            if held is None:
                self._clear_probe(gate)
                return
            self._unschedule(gate.probe)
            self._make_ready(held)
        else:
            gate.rewake = True

    def wake_all(self) -> None:
        for name in list(self._gates):
            self.wake(name)

    def leave_all(self, job_id: str) -> None:
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

    def _clear_probe(self, gate: Gate) -> None:
        gate.probe, gate.sleeping, gate.rewake = None, False, False
        self._promote(gate)

    def _promote(self, gate: Gate) -> None:
        """The next queued job becomes the gate's probe and goes to the ready queue."""
        while gate.queue:
            job_id = gate.queue.popleft()
            held = self._lookup(job_id)
            if held is None or held.running:
                self._leave(job_id, gate.slot.name)
                continue
            gate.probe = job_id
            self._make_ready(held)
            return
        self.drop_if_idle(gate)

    def drop_if_idle(self, gate: Gate) -> None:
        if gate.probe is None and not gate.queue and not gate.inflight:
            self._gates.pop(gate.slot.name, None)

    def waiting_stats(self) -> list[dict[str, Any]]:
        """Waiting jobs per (job, key), the busiest first; beyond MAX_LABELLED_KEYS: "other"."""
        rows = sorted(
            ((gate.waiting, gate.slot) for gate in self._gates.values() if gate.waiting),
            key=lambda row: -row[0],
        )
        out: list[dict[str, Any]] = [
            {"job_name": slot.job, "limit_key": slot.label, "waiting": n}
            for n, slot in rows[:MAX_LABELLED_KEYS]
        ]
        rest: dict[str, int] = {}
        for n, slot in rows[MAX_LABELLED_KEYS:]:
            rest[slot.job] = rest.get(slot.job, 0) + n
        out += [{"job_name": job, "limit_key": "other", "waiting": n} for job, n in rest.items()]
        return out
