"""Node: receives jobs, stores them, runs them on timers, reports back (docs/semantics.md §2, §6).

Life of a job here: `receive_jobs` → stored (acknowledged only then) → due now: the
ready queue; later: the timer heap (one loop timer for the earliest) → an attempt (runner.py)
→ success / retry / failure / cancel, each reported to the distributor it came from.
State changes are written behind, batched once per tick, so storage costs no round trip per job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any

from jobreactor.config import ReactorConfig
from jobreactor.cron import skip_missed_tick
from jobreactor.definitions import Registry
from jobreactor.errors import StorageError
from jobreactor.job import (
    JobRecord,
)
from jobreactor.metrics import METRICS
from jobreactor.node import guards
from jobreactor.node.attempts import Held
from jobreactor.node.control import NodeControl
from jobreactor.node.identity import expand_node_name, new_instance_id
from jobreactor.node.limits import NodeLimits
from jobreactor.node.link import DistributorLink
from jobreactor.node.membership import Membership
from jobreactor.node.persistence import Persistence
from jobreactor.node.scheduler import LOOP_TIMER_LEAD_S, ReadyQueue, TimerHeap, timer_lead
from jobreactor.protocol import Record
from jobreactor.protocol.auth import secret_bytes
from jobreactor.ratelimit import RateLimitedLog
from jobreactor.storage.base import Storage

if TYPE_CHECKING:
    from jobreactor.node.discovered import Discovered

logger = logging.getLogger("jobreactor.node")

# Due times are on time.monotonic(), read fresh: the loop's own clock (uvloop's uv_now) is
# cached per loop turn and in whole milliseconds, and converting a wall-clock due time with a
# stale reading made jobs start up to half a millisecond early. loop.call_at shares the clock.

# Jobs started per loop turn before yielding, so acks and reports keep flowing under load.
_DRAIN_BUDGET = 512

# A job due later than this after it is scheduled waits packed (msgpack bytes, not a record):
# a million week-long delayed jobs then cost a node a third of the memory.
_PACK_AFTER_S = 2.0


class Node(Membership, Persistence):
    def __init__(  # noqa: PLR0913 (the keyword-only options of start_node)
        self,
        name: str,
        settings: ReactorConfig,
        registry: Registry,
        storage: Storage,
        distributors: list[tuple[str, int]],
        *,
        secret: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        redis_url: str | None = None,
        discovery_url: str | None = None,
        group: str | None = None,
    ) -> None:
        self.name = expand_node_name(name)
        self.instance = new_instance_id()  # tells our reconnections from a namesake's
        self._redis_url = redis_url
        self.settings = settings
        self.registry = registry
        self.storage = storage
        secret = secret if secret is not None else settings.secret
        self.secret = secret_bytes(secret)
        self.loop = asyncio.get_running_loop()
        self._ssl = ssl_context
        self.links = [DistributorLink(self, h, p, ssl_context) for h, p in distributors]
        self._jobs: dict[str, Held] = {}
        self._timers = TimerHeap()
        self._ready = ReadyQueue()
        self._timer: asyncio.Handle | None = None
        self._timer_when: float | None = None
        self._drain_scheduled = False
        self._running = 0
        self._concurrency = settings.concurrency
        self._window = settings.concurrency + settings.prefetch  # credits a node grants
        self._inbox: list[Held] = []
        self._parked: dict[str, float] = {}  # recovered jobs waiting for their distributor
        self._storing = False
        self._probing = False
        self._dirty: dict[str, JobRecord] = {}
        self._doomed: set[str] = set()
        self._flushing = False
        # Memory storage keeps the node's own record objects (saved once on receipt), so state
        # changes need no write; a durable storage gets every change, batched per tick.
        self._write_behind = storage.durable
        self._init_packing(storage)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._link_tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.control = NodeControl(self)  # quiet / resume / drain (node/control.py)
        self.intake_closed = False  # close_intake(): no credit granted any more
        self._drain_deadline: asyncio.Timeout | None = None
        self._stop_now = asyncio.Event()  # a second signal: stop without waiting for anything
        # A storage that is down fails every write-behind retry: say so every 10 s, not each.
        self._write_failed_log = RateLimitedLog(logger, logging.ERROR, 10.0)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            settings.thread_pool_size, thread_name_prefix=f"jobreactor-{name}"
        )
        self._log_jobs = settings.log_job_processing and logger.isEnabledFor(logging.INFO)
        self._metrics = METRICS if settings.metrics else None
        self.limits = NodeLimits(self, settings.limit_lease)
        METRICS.track(self)
        METRICS.register(registry.names())
        self.group = group if group is not None else settings.group
        self.discovered = self._discovery(discovery_url or settings.discovery_url)

    def _discovery(self, url: str | None) -> Discovered | None:
        """The registry side of this node (node/discovered.py), with a discovery_url."""
        if not url:
            return None
        from jobreactor.node.discovered import Discovered  # imports redis-py

        return Discovered(self, url, self.group)

    def __repr__(self) -> str:
        return (
            f"<Node {self.name} held={len(self._jobs)} running={self._running} "
            f"scheduled={len(self._timers)} ready={len(self._ready)}>"
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.retry_jobs_at_start and self.storage.durable:
            await self._recover()
        if getattr(self.storage, "commands", None) is not None:
            self._spawn(self._listen())
        for link in self.links:
            self._run_link(link)
        if self.discovered is not None:
            await self.discovered.start()

    def _run_link(self, link: DistributorLink) -> None:
        task = self.loop.create_task(link.run(), name=f"link {link.configured}")
        self._link_tasks.append(task)
        task.add_done_callback(self._link_done)

    def _link_done(self, task: asyncio.Task[None]) -> None:
        if task in self._link_tasks and not self._stopping:
            self._link_tasks.remove(task)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every static link has been welcomed once and discovery has looked once."""
        async with asyncio.timeout(timeout):
            for link in list(self.links):
                await link.ready.wait()
            if self.discovered is not None:
                await self.discovered.watcher.reconciled.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: hand back unstarted jobs, let running ones finish (bounded), close."""
        if self._stopping:
            # A second stop (second signal) with a shorter grace tightens the drain now.
            if grace == 0:
                self._stop_now.set()  # and the closing writes stop waiting for the storage
            deadline = self._drain_deadline
            if grace is not None and deadline is not None:
                cutoff = self.loop.time() + grace
                when = deadline.when()
                if when is None or cutoff < when:
                    deadline.reschedule(cutoff)
            return
        self._stopping = True
        grace = self.settings.shutdown_timeout if grace is None else grace
        stop_by = self.loop.time() + grace
        if self.discovered is not None:
            await self.discovered.stop()
        self._hand_back_unstarted()
        await self._wait_running(grace)
        self._hand_back_unstarted()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        # Bounded whatever the storage does: shutdown_timeout rules (a second signal: now).
        await self._flush_before_stop(max(0.5, stop_by - self.loop.time()), self._stop_now)
        for link in self.links:
            await link.wait_reports_acked(timeout=min(2.0, grace + 0.5))
        for link in self.links:
            link.stop()
        for task in self._link_tasks:
            task.cancel()
        await asyncio.gather(*self._link_tasks, return_exceptions=True)
        self._release_resources()
        await self.storage.aclose()
        logger.info("node %s stopped", self.name)

    def _release_resources(self) -> None:
        """The timer, the limit gates and both pools: the last step of a stop."""
        if self._timer is not None:
            self._timer.cancel()
        if self.limits is not None:
            self.limits.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown()

    async def _wait_running(self, grace: float) -> None:
        if not self._running:
            return
        self._idle.clear()
        try:
            async with asyncio.timeout(grace) as deadline:
                self._drain_deadline = deadline
                await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "%s: %d attempt(s) still running after shutdown_timeout=%.1fs; cancelling",
                self.name,
                self._running,
                grace,
            )

    def _hand_back_unstarted(self) -> None:
        """Give jobs not started back to their distributor (memory: all; durable: due ones)."""
        by_link: dict[DistributorLink, list[str]] = {}
        limits = self.limits
        for job_id, held in list(self._jobs.items()):
            if held.running or held.link is None or not held.link.is_ready:
                continue
            # Durable storage keeps scheduled jobs; due ones (ready, or waiting for a limit's
            # slot) go back, to run elsewhere now.
            if self.storage.durable and not (
                job_id in self._ready or (limits is not None and limits.is_waiting(job_id))
            ):
                continue
            by_link.setdefault(held.link, []).append(job_id)
        if not self.storage.durable:  # packed jobs are never due now: durable storage keeps them
            for job_id, _, link, _ in self._packed_jobs():
                if link.is_ready:
                    by_link.setdefault(link, []).append(job_id)
        for link, job_ids in by_link.items():
            link.hand_back(job_ids)
            for job_id in job_ids:
                unpacked = self._jobs.get(job_id)
                if unpacked is None:
                    self._forget_packed(job_id)
                else:
                    self._forget(unpacked, destroy=True)
            logger.info("%s handed %d job(s) back to %s", self.name, len(job_ids), link.address)

    # --- links ----------------------------------------------------------------------------------

    def close_intake(self) -> None:
        """Take no more jobs (credit 0 on every link); held ones go on (a recycling child)."""
        self.intake_closed = True
        for link in self.links:
            link.pause()

    def free_credits(self, link: DistributorLink) -> int:
        if self._stopping or self._probing or self.control.quiet or self.intake_closed:
            return 0
        used = sum(1 for h in self._jobs.values() if h.link is link and h.holds_credit)
        return max(0, self._window - used)

    def held_from(self, link: DistributorLink) -> list[tuple[str, int]]:
        return [
            (h.record.id, h.record.lease)
            for h in self._jobs.values()
            if not h.dropped and (h.link is link or h.record.distributor == link.configured)
        ] + self._packed_held_from(link)

    def link_ready(self, link: DistributorLink, drop: list[str], *, settled: bool = True) -> None:
        """Welcomed: drop what the distributor gave away; run parked jobs once all is settled."""
        for held in self._jobs.values():
            if held.link is None and held.record.distributor in (link.address, link.configured):
                held.link = link  # recovered from storage: now we know where to report
        self.jobs_dropped(link, drop, settled=settled)
        if self.discovered is not None:
            self.discovered.welcomed(link)
            self.discovered.reroute()

    def jobs_dropped(self, link: DistributorLink, drop: list[str], *, settled: bool) -> None:
        """Forget jobs the distributor gave to another node. `settled`: its last answer."""
        for job_id in drop:
            self._parked.pop(job_id, None)
            gone = self._held(job_id)
            if gone is not None:
                gone.dropped = True
                if not gone.running:
                    self._forget(gone, destroy=True)
        link.drop_reports_for(set(drop))
        if not settled:
            return
        for job_id, due in list(self._parked.items()):
            waiting = self._jobs.get(job_id)
            if waiting is not None and waiting.link is link:
                del self._parked[job_id]
                self._schedule_at_epoch(waiting, due)

    def link_down(self, link: DistributorLink) -> None:
        """Held jobs go on; their reports wait in the link until it (or another link to the
        same instance) is welcomed."""
        if self.discovered is not None:
            self.discovered.link_down(link)

    def link_tried(self, link: DistributorLink) -> None:
        """`link`'s first dial ended (connected or not)."""
        if self.discovered is not None:
            self.discovered.link_tried(link)

    # --- receiving ------------------------------------------------------------------------------

    def receive_jobs(self, link: DistributorLink, jobs: list[tuple[int, Record]]) -> None:
        for lease, data in jobs:
            job_id = data["id"]
            if self._stopping or self.intake_closed:
                link.hand_back([job_id])
                continue
            existing = self._held(job_id)
            if existing is not None:  # sent again after a reconnect: keep ours, take the lease
                existing.record.lease, existing.link = lease, link
                link.ack(lease, credit=True)
                continue
            try:
                record = JobRecord.from_dict(data)
            except TypeError as exc:
                link.nack(lease, f"bad job record: {exc}")
                continue
            record.node = self.name
            record.lease = lease
            # Shared strings: name and distributor repeat across millions of pending jobs.
            record.name = sys.intern(record.name)
            record.distributor = sys.intern(record.distributor)
            held = Held(record, link, origin=link.instance)
            self._jobs[job_id] = held
            self._inbox.append(held)
        if self._inbox and not self._storing:
            self._storing = True
            self._spawn(self._store_inbox())

    async def _store_inbox(self) -> None:
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                try:
                    await self.storage.save_many(self.name, [h.record for h in batch])
                except StorageError as exc:
                    logger.error(
                        "%s could not store %d job(s): %s; handing them back and taking no "
                        "more until the storage answers again",
                        self.name,
                        len(batch),
                        exc,
                    )
                    for held in batch:
                        if held.link is not None:
                            held.link.nack(held.record.lease, str(exc))
                        self._jobs.pop(held.record.id, None)
                    if not self._probing:
                        # Take no jobs (credit 0 on every link) until the storage answers:
                        # no ping-pong of jobs between us and the distributor meanwhile.
                        self._probing = True
                        for link in self.links:
                            link.pause()
                        self._spawn(self._probe_storage())
                    continue
                self._accept(batch)
        finally:
            self._storing = False

    async def _probe_storage(self) -> None:
        """Retry the storage with backoff; when it answers, give back the withheld credits."""
        delay = self.settings.reconnect_interval
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.storage.holder(f"probe:{self.name}")
                except StorageError:
                    delay = min(delay * 2, 30.0)
                    continue
                break
            self._probing = False
            for link in self.links:
                link.grant(self.free_credits(link))
            logger.info("%s: storage answers again; taking jobs", self.name)
        finally:
            self._probing = False

    def _accept(self, batch: list[Held]) -> None:
        now_loop, now_epoch = time.monotonic(), time.time()
        for held in batch:
            if held.dropped or held.link is None:
                continue
            if held.record.cron is not None:
                skip_missed_tick(held.record, now_epoch, self.name)
            due = now_loop + (held.record.run_at_ts - now_epoch)
            instant = due <= now_loop
            held.holds_credit = instant
            held.link.ack(held.record.lease, credit=not instant)
            self._schedule(held, due, now_loop)

    # --- time -----------------------------------------------------------------------------------

    def _schedule(self, held: Held, due: float, now: float) -> None:
        job_id = held.record.id
        if due <= now:
            self._ready.push(job_id, held.record.priority)
            self._kick()
            return
        if due - now <= _PACK_AFTER_S or not self._pack(held, job_id, due):
            self._timers.schedule(job_id, due)
        if self._timer_when is None or due < self._timer_when:
            self._arm_timer()

    def sleep_until(self, held: Held, due: float) -> None:
        """On the timer heap, unpacked, until `due` (a job waiting for a limit's window)."""
        self._timers.schedule(held.record.id, due)
        if self._timer_when is None or due < self._timer_when:
            self._arm_timer()

    def _schedule_at_epoch(self, held: Held, due_epoch: float) -> None:
        now_loop = time.monotonic()
        self._schedule(held, now_loop + (due_epoch - time.time()), now_loop)

    def _arm_timer(self) -> None:
        deadline = self._timers.next_deadline()
        if deadline == self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = (
            None
            if deadline is None
            else self.loop.call_at(deadline - LOOP_TIMER_LEAD_S, self._on_timer)
        )

    def _on_timer(self) -> None:
        when = self._timer_when
        if when is not None and timer_lead(when, time.monotonic()) is not None:
            self._timer = self.loop.call_soon(self._on_timer)  # armed early: the last of it
            return
        if self._metrics is not None and self._timer_when is not None:
            self._metrics.lateness.observe(self.name, time.monotonic() - self._timer_when)
        self._timer = None
        self._timer_when = None
        for entry in self._timers.pop_due_entries(time.monotonic()):
            job_id = entry[1]
            held = self._jobs.get(job_id) if len(entry) == 2 else self._revive(entry)
            if held is not None:
                self._ready.push(job_id, held.record.priority)
        self._arm_timer()
        self._drain()  # now, not a loop turn later: timers are what lateness is made of

    def _kick(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._stopping:
            return  # no new attempts while shutting down; unstarted jobs are handed back
        budget = _DRAIN_BUDGET
        while self._running < self._concurrency and budget > 0:
            job_id = self._ready.pop()
            if job_id is None:
                return
            held = self._jobs.get(job_id)
            if held is None or held.running:
                continue
            budget -= 1
            self._claim_slot(held)
            if guards.needs_guard(held, self.registry):
                if not guards.enter_now(self, held):
                    self._spawn(guards.enter(self, held))
            else:
                self.start_attempt(held)
        if len(self._ready) and self._running < self._concurrency:
            self._kick()

    # --- introspection ----------------------------------------------------------------------------

    @property
    def held_count(self) -> int:
        return len(self._jobs) + self._packed_n

    @property
    def running_count(self) -> int:
        return self._running
