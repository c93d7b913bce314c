"""Journal: a distributor's durable record of the jobs it accepted and has not finished.

With redis storage on the distributor, every accepted job is written here before it is
dispatched (batched: one pipeline per loop tick for every job accepted in it), updated when it
is sent to a node (which node, which lease), and removed at its final report. A node's reports
are acknowledged only once that removal is stored (`when_durable`): a report whose removal
died with this process is sent again by its node, to a restart or to the adopter. The updates
and removals of one loop turn (a dispatch round's assignments, a batch of reports' removals)
go in one write, one round trip with Redis (`queue_update`); a round is sent only once its
assignments are stored (the distributor waits on `when_durable`). If the write
fails the job is refused, not dispatched: its handle's `accepted()` raises, so "enqueued" always
means "stored". A restarted distributor reads the journal back: jobs never sent are queued
again; jobs out on a node wait for that node (node_grace) under the lease it holds. Feedbacks
registered by name (`JR.register_feedback`) are found again; closures can't be stored, so their
jobs still run but report to nobody.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from jobreactor.errors import StorageError
from jobreactor.handle import JobHandle
from jobreactor.job import JobRecord
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.distributor")

# Tests only: hold every journal write that removes jobs this many seconds, so a test can kill a
# distributor between a final report and its removal. Set as JOBREACTOR_TEST_JOURNAL_DELAY by
# tests/discovery/test_adoption_acks.py (`producers(..., test_journal_delay=60)`).
_TEST_DELAY = float(os.environ.get("JOBREACTOR_TEST_JOURNAL_DELAY") or 0)

ASSIGNED = "assigned_to"  # extra field: the node a journaled job was sent to
# Extra field: the instance that sent an adopted job to its node. Kept through chained
# adoptions (a recycling adopter releases it again): the node knows the job by that sender.
ORIGIN = "sent_by"


class Journal:
    def __init__(
        self,
        storage: Storage,
        queue: str,
        retry_interval: float,
        on_admitted: Callable[[list[JobRecord]], None],
        on_refused: Callable[[list[JobRecord]], None],
    ) -> None:
        self.storage = storage
        self.queue = queue
        self._retry_interval = retry_interval
        self._on_admitted = on_admitted
        self._on_refused = on_refused
        self._admit: list[tuple[JobRecord, JobHandle | None]] = []
        self._save: dict[str, JobRecord] = {}
        self._remove: set[str] = set()
        self._withdraw: set[str] = set()
        self._durable: list[Callable[[], None]] = []  # run once everything before is stored
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        # New jobs are written by a task of their own: an enqueue that waits for its store
        # (aenqueue) waits for one round trip, not behind the updates and removals in flight.
        # Safe to reorder: a job's updates and removal all follow its store (it is dispatched
        # only once stored); a cancel while it is stored is removed again after (`_admitted`).
        self._admitting: asyncio.Task[None] | None = None
        # save, remove and withdraw in one call (RedisStorage.queue_update), if the storage can
        self._write_all: Callable[..., Awaitable[None]] | None = getattr(
            storage, "queue_update", None
        )

    def admit(self, job: JobRecord, handle: JobHandle | None) -> None:
        """Store `job`, then hand it to `on_admitted`; refuse it if it can't be stored."""
        self._admit.append((job, handle))
        if self._admitting is None:
            self._admitting = asyncio.get_running_loop().create_task(self._flush_admits())

    async def _flush_admits(self) -> None:
        try:
            while self._admit:
                admit, self._admit = self._admit, []
                try:
                    await self.storage.queue_save(self.queue, [job for job, _ in admit])
                except StorageError as exc:
                    self._refuse(exc, admit)
                    await asyncio.sleep(self._retry_interval)
                    continue
                self._settle_admitted(admit)
        finally:
            self._admitting = None

    def assigned(self, job: JobRecord, node: str, lease: int, origin: str = "") -> None:
        """`job` is out on `node` under `lease`, sent by instance `origin` ("": by us)."""
        job.lease = lease
        if job.extra is None:
            job.extra = {}
        job.extra[ASSIGNED] = node
        if origin:
            job.extra[ORIGIN] = origin
        else:
            job.extra.pop(ORIGIN, None)
        self._update(job)

    def unassigned(self, job: JobRecord) -> None:
        if job.extra:
            job.extra.pop(ASSIGNED, None)
            job.extra.pop(ORIGIN, None)
        job.lease = 0
        self._update(job)

    def switch(self, queue: str) -> None:
        """Go on in a new, empty queue (the old one was adopted): forget pending updates."""
        self.queue = queue
        self._save.clear()
        self._remove.clear()

    def _update(self, job: JobRecord) -> None:
        self._remove.discard(job.id)
        self._save[job.id] = job
        self._flush_soon()

    def remove(self, job_id: str) -> None:
        self._save.pop(job_id, None)
        self._remove.add(job_id)
        self._flush_soon()

    def withdraw(self, job_ids: list[str]) -> None:
        """Forget jobs whose enqueue timed out, and refuse their write if it lands later."""
        for job_id in job_ids:
            self._save.pop(job_id, None)
            self._remove.discard(job_id)
            self._withdraw.add(job_id)
        self._flush_soon()

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every change made so far is stored (after the next write)."""
        self._durable.append(callback)
        self._flush_soon()

    async def durable(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until every change made so far is stored."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def stored() -> None:
            if not done.done():
                done.set_result(None)

        self.when_durable(stored)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError:
            return False
        return True

    def _flush_soon(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._task = asyncio.get_running_loop().create_task(self._flush_updates())

    async def flush(self) -> None:
        """Write everything pending (new jobs first) until nothing is."""
        while self._admit or self._admitting or self._pending_updates():
            updating = self._task if self._flushing else None
            if self._admitting is not None:
                await asyncio.shield(self._admitting)
            elif self._admit:
                self._admitting = asyncio.get_running_loop().create_task(self._flush_admits())
            elif updating is not None and not updating.done():
                await asyncio.shield(updating)
            else:
                await self._flush_once()

    async def _flush_updates(self) -> None:
        try:
            while self._pending_updates():
                await self._flush_once()
        finally:
            self._flushing = False

    def _pending_updates(self) -> bool:
        return bool(self._save or self._remove or self._withdraw or self._durable)

    async def _flush_once(self) -> None:
        save, self._save = self._save, {}
        remove, self._remove = self._remove, set()
        withdraw, self._withdraw = self._withdraw, set()
        durable, self._durable = self._durable, []
        try:
            if _TEST_DELAY and remove:
                await asyncio.sleep(_TEST_DELAY)
            if save or remove or withdraw:
                await self._write(list(save.values()), list(remove), list(withdraw))
        except StorageError as exc:
            logger.error("distributor journal update failed (%s); will retry", exc)
            for job_id, job in save.items():
                self._save.setdefault(job_id, job)
            self._remove.update(remove - self._save.keys())
            self._withdraw |= withdraw
            self._durable[:0] = durable  # acknowledged after the retry stores it
            await asyncio.sleep(self._retry_interval)
            return
        for callback in durable:
            callback()

    async def _write(self, save: list[JobRecord], remove: list[str], withdraw: list[str]) -> None:
        """One loop turn's updates: in one round trip where the storage can (Redis)."""
        if self._write_all is not None:
            await self._write_all(self.queue, save, remove, withdraw)
            return
        if save:
            await self.storage.queue_save(self.queue, save)
        if remove:
            await self.storage.queue_remove(self.queue, remove)
        if withdraw:
            await self.storage.queue_withdraw(self.queue, withdraw)

    def _settle_admitted(self, admit: list[tuple[JobRecord, JobHandle | None]]) -> None:
        """The write landed: dispatch the jobs whose caller still waits; a job whose enqueue
        timed out meanwhile was withdrawn (its caller was told it won't run): delete it."""
        accepted: list[JobRecord] = []
        withdrawn: list[JobRecord] = []
        for job, handle in admit:
            (accepted if handle is None or handle._stored() else withdrawn).append(job)
        if withdrawn:
            logger.warning(
                "%d job(s) stored after their enqueue timed out (first: %s): deleted, not run",
                len(withdrawn),
                withdrawn[0].id,
            )
            self.withdraw([job.id for job in withdrawn])
            self._on_refused(withdrawn)
        if accepted:
            self._on_admitted(accepted)

    def _refuse(self, exc: StorageError, admit: list[tuple[JobRecord, JobHandle | None]]) -> None:
        """New jobs could not be stored: refused (their callers get `exc`); never run."""
        logger.error(
            "distributor journal write failed (%s): %d new job(s) refused; "
            "check that Redis is reachable",
            exc,
            len(admit),
        )
        for _, handle in admit:
            if handle is not None:
                handle._stored(exc)
        self._on_refused([job for job, _ in admit])

    async def load(self) -> list[JobRecord]:
        return await self.storage.queue_load(self.queue)

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, self._admitting) if t is not None and not t.done()]
        if tasks:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(asyncio.gather(*tasks))
            except TimeoutError:
                logger.warning("distributor journal: its last writes did not finish in time")


def assignee(job: JobRecord) -> Any:
    return (job.extra or {}).get(ASSIGNED)


def sender(job: JobRecord, adopted_from: str) -> str:
    """The instance a node got `job` from: the one recorded, else `adopted_from`."""
    recorded = (job.extra or {}).get(ORIGIN)
    return recorded if isinstance(recorded, str) and recorded else adopted_from
