"""Time on a node, the asyncio side: one loop timer for the earliest due job, the drain that
starts due jobs while run slots are free, and the run-slot count (docs/semantics.md §2).

Due times are on time.monotonic(), read fresh: the loop's own clock (uvloop's uv_now) is
cached per loop turn and in whole milliseconds, and converting a wall-clock due time with a
stale reading made jobs start up to half a millisecond early. loop.call_at shares the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from jobreactor.metrics import JobMetrics
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.scheduler import LOOP_TIMER_LEAD_S, timer_lead

logger = logging.getLogger("jobreactor.node")

# Jobs started per loop turn before yielding, so acks, credits and reports keep flowing under
# load. 512 let a node run half its credit window of no-op jobs in one turn and hand all those
# credits back at once: the distributor then sent them back as one batch too, and the two
# sides took turns instead of working side by side. 64 split the window finely but cost a
# Redis node a storage round trip (save, delete) per 64 jobs; 128 is the middle (issue 20,
# session 6: docs/decisions.md).
_DRAIN_BUDGET = 128

# A job due later than this after it is scheduled waits packed (msgpack bytes, not a record):
# a million week-long delayed jobs then cost a node a third of the memory.
PACK_AFTER_S = 2.0


class Clock(Protocol):
    """What the attempt parts need of time and run slots (eager mode has its own: it skips time)."""

    def at_epoch(self, held: HeldJob, due_epoch: float) -> None:
        """Run `held` at wall-clock `due_epoch` (now if past)."""

    def claim(self, held: HeldJob) -> None:
        """`held` takes a run slot."""

    def release(self) -> None:
        """A run slot is free again (its attempt ended, or it waits for a limit)."""


class Timetable:
    """The node's Clock: timers, ready queue drain, run slots."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        holdings: Holdings,
        concurrency: int,
        *,
        node_name: str,
        metrics: JobMetrics | None,
    ) -> None:
        self._loop = loop
        self._holdings = holdings
        self._jobs = holdings.jobs
        self._timers = holdings.timers
        self._ready = holdings.ready
        self._concurrency = concurrency
        self._name = node_name
        self._metrics = metrics
        self._timer: asyncio.Handle | None = None
        self._timer_when: float | None = None
        self._drain_scheduled = False
        self._start: Callable[[HeldJob], None] = _never
        self._guarded: Callable[[HeldJob], bool] = lambda held: False
        self._guard: Callable[[HeldJob], None] = _never
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopped = False  # no new attempts: the node stops
        self._idle_deadline: asyncio.Timeout | None = None

    def connect(
        self,
        start: Callable[[HeldJob], None],
        guarded: Callable[[HeldJob], bool],
        guard: Callable[[HeldJob], None],
    ) -> None:
        """What the drain does with a due job whose run slot it took (node.py wires it): `start`
        it, or if it is `guarded`, `guard` it (guards.py: checks, then start)."""
        self._start, self._guarded, self._guard = start, guarded, guard

    # --- scheduling -----------------------------------------------------------------------------

    def schedule(self, held: HeldJob, due: float, now: float) -> None:
        """`held` runs at monotonic `due` (`now` is the monotonic time it was computed at)."""
        if due <= now:
            self._ready.push(held.record.id, held.record.priority)
            self.kick()
            return
        if due - now <= PACK_AFTER_S or not self._holdings.pack(held, due):
            self._timers.schedule(held.record.id, due)
        if self._timer_when is None or due < self._timer_when:
            self._arm()

    def at_epoch(self, held: HeldJob, due_epoch: float) -> None:
        now = time.monotonic()
        self.schedule(held, now + (due_epoch - time.time()), now)

    def sleep_until(self, held: HeldJob, due: float) -> None:
        """On the timer heap, unpacked, until `due` (a job waiting for a limit's window)."""
        self._timers.schedule(held.record.id, due)
        if self._timer_when is None or due < self._timer_when:
            self._arm()

    def make_ready(self, held: HeldJob) -> None:
        """Due now: to the ready queue (a job a limit's wake let through)."""
        self._ready.push(held.record.id, held.record.priority)
        self.kick()

    def _arm(self) -> None:
        deadline = self._timers.next_deadline()
        if deadline == self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = (
            None
            if deadline is None
            else self._loop.call_at(deadline - LOOP_TIMER_LEAD_S, self._on_timer)
        )

    def _on_timer(self) -> None:
        when = self._timer_when
        if when is not None and timer_lead(when, time.monotonic()) is not None:
            self._timer = self._loop.call_soon(self._on_timer)  # armed early: the last of it
            return
        if self._metrics is not None and self._timer_when is not None:
            self._metrics.lateness.observe(self._name, time.monotonic() - self._timer_when)
        self._timer = None
        self._timer_when = None
        jobs, ready, revive = self._jobs, self._ready, self._holdings.revive
        for entry in self._timers.pop_due_entries(time.monotonic()):
            job_id = entry[1]
            held = jobs.get(job_id) if len(entry) == 2 else revive(entry)
            if held is not None:
                ready.push(job_id, held.record.priority)
        self._arm()
        self._drain()  # now, not a loop turn later: timers are what lateness is made of

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    async def wait_idle(self, grace: float) -> None:
        """Until no attempt runs, for at most `grace` seconds (`tighten` may shorten it)."""
        if not self.running:
            return
        self.idle.clear()
        try:
            async with asyncio.timeout(grace) as deadline:
                self._idle_deadline = deadline
                await self.idle.wait()
        except TimeoutError:
            logger.warning(
                "%s: %d attempt(s) still running after shutdown_timeout=%.1fs; cancelling",
                self._name,
                self.running,
                grace,
            )

    def tighten(self, grace: float) -> None:
        """`wait_idle` ends within `grace` seconds from now, if that is sooner (a second stop)."""
        deadline = self._idle_deadline
        if deadline is not None:
            cutoff = self._loop.time() + grace
            when = deadline.when()
            if when is None or cutoff < when:
                deadline.reschedule(cutoff)

    # --- run slots --------------------------------------------------------------------------------

    def kick(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def claim(self, held: HeldJob) -> None:
        held.running = True
        self.running += 1
        if self.running == 1:
            self.idle.clear()

    def release(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.idle.set()
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.stopped:
            return  # no new attempts while shutting down; unstarted jobs are handed back
        budget = _DRAIN_BUDGET
        ready, jobs, concurrency = self._ready, self._jobs, self._concurrency
        start, guarded, guard = self._start, self._guarded, self._guard
        while self.running < concurrency and budget > 0:
            job_id = ready.pop()
            if job_id is None:
                return
            held = jobs.get(job_id)
            if held is None or held.running:
                continue
            budget -= 1
            held.running = True  # claim(held), inline: the hot path
            self.running += 1
            if self.running == 1:  # `idle` is set only while nothing runs
                self.idle.clear()
            if guarded(held):
                guard(held)
            else:
                start(held)
        if len(ready) and self.running < concurrency:
            self.kick()


def _never(held: HeldJob) -> None:
    raise AssertionError("Timetable.connect was not called")
