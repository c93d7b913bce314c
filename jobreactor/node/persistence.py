"""A node's storage: state changes written behind (batched, once per loop turn, retried on
failure), its unfinished jobs resumed at start (`retry_jobs_at_start`), and wake-ups pushed
through Redis. Node (node.py) mixes this in; the attributes below are Node's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from jobreactor.cron import skip_missed_tick
from jobreactor.errors import StorageError
from jobreactor.job import JobRecord, JobStatus
from jobreactor.node.attempts import Attempts, Held
from jobreactor.node.control import CONTROL_PREFIX
from jobreactor.node.limits import WAKE_PREFIX
from jobreactor.ratelimit import RateLimitedLog

logger = logging.getLogger("jobreactor.node")


class Persistence(Attempts):
    """_persist, _flush_soon, _recover, _listen, _wake. The attributes below are Node's."""

    if TYPE_CHECKING:
        _write_behind: bool
        _flushing: bool
        _write_failed_log: RateLimitedLog
        _parked: dict[str, float]

        def _holds(self, job_id: str) -> bool: ...

    def _persist(self, record: JobRecord) -> None:
        if not self._write_behind:
            # Memory storage holds this very object: nothing to write, but its failed and
            # retrying indexes (storage/status_index.py) follow the status.
            note = getattr(self.storage, "note_status", None)
            if note is not None:
                note(self.name, record)
            return
        self._doomed.discard(record.id)
        self._dirty[record.id] = record
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_storage())

    async def _flush_before_stop(self, timeout: float, stop_now: asyncio.Event) -> None:
        """The last writes of a stopping node, bounded by `timeout` (or until `stop_now`):
        a storage that is down must not keep the process running (issue 17)."""
        flush = asyncio.ensure_future(self._flush_storage())
        interrupt = asyncio.ensure_future(stop_now.wait())
        await asyncio.wait({flush, interrupt}, timeout=timeout, return_when="FIRST_COMPLETED")
        interrupt.cancel()
        if flush.done():
            return
        flush.cancel()
        await asyncio.wait({flush}, timeout=1.0)
        logger.warning(
            "%s: %d job state change(s) not stored before stopping (storage unreachable); "
            "those jobs resume from their last stored state at the next start",
            self.name,
            len(self._dirty) + len(self._doomed),
        )

    async def _flush_storage(self) -> None:
        try:
            while self._dirty or self._doomed:
                dirty = list(self._dirty.values())
                doomed = list(self._doomed)
                self._dirty.clear()
                self._doomed.clear()
                try:
                    if dirty:
                        await self.storage.save_many(self.name, dirty)
                    if doomed:
                        await self.storage.destroy_many(self.name, doomed)
                except StorageError as exc:
                    self._write_failed_log(
                        "%s: storage write failed (%s); will retry", self.name, exc
                    )
                    for record in dirty:
                        self._dirty.setdefault(record.id, record)
                    self._doomed.update(doomed)
                    await asyncio.sleep(self.settings.reconnect_interval)
        finally:
            self._flushing = False

    async def _recover(self) -> None:
        """`retry_jobs_at_start`: resume this node's unfinished jobs (docs/semantics.md §6)."""
        jobs = await self.storage.jobs_for(self.name, unfinished_only=True)
        now = time.time()
        known = {link.configured for link in self.links}
        for record in jobs:
            record.args["retrying"] = True
            held = Held(record, None)
            self._jobs[record.id] = held
            if record.cron is not None and record.status != JobStatus.IN_PROGRESS:
                skip_missed_tick(record, now, self.name)
            due = now if record.status == JobStatus.IN_PROGRESS else max(now, record.run_at_ts)
            if record.distributor in known:
                # Wait for that distributor's welcome: it may have given the job to another
                # node while we were away (node_grace), and then we must not run it too.
                self._parked[record.id] = due
            else:
                self._schedule_at_epoch(held, due)  # nobody to ask: run it
        if jobs:
            logger.info(
                "%s resumed %d stored job(s), %d waiting for their distributor",
                self.name,
                len(jobs),
                len(self._parked),
            )

    async def _listen(self) -> None:
        """Wake-ups pushed through Redis (`jobreactor jobs retry`): no polling, ever."""
        commands = self.storage.commands  # type: ignore[attr-defined]
        async for job_id in commands(self.name, resync=True):
            try:
                if job_id.startswith(CONTROL_PREFIX):  # `jobreactor node quiet` and the like
                    self._control_op(job_id[len(CONTROL_PREFIX) :])
                elif job_id.startswith(WAKE_PREFIX) and self.limits is not None:
                    self.limits.wake(job_id[len(WAKE_PREFIX) :])  # a limit's slot freed up
                elif job_id:
                    await self._wake(job_id)
                else:  # resubscribed: messages sent meanwhile are lost, so look again
                    if self.limits is not None:
                        self.limits.wake_all()
                    for record in await self.storage.jobs_for(self.name, unfinished_only=True):
                        if not self._holds(record.id):
                            await self._wake(record.id)
            except StorageError as exc:
                logger.warning("%s: could not act on a wake-up: %s", self.name, exc)

    def _control_op(self, message: str) -> None:
        op, _, who = message.partition(":")
        try:
            self.control.apply(op, who=who or "redis")  # type: ignore[attr-defined]
        except ValueError as exc:
            logger.warning("%s: %s", self.name, exc)

    async def _wake(self, job_id: str) -> None:
        """(Re)schedule a stored job of ours from its record, e.g. a failed job to retry."""
        record = await self.storage.load(self.name, job_id)
        held = self._held(job_id)
        if record is None or record.is_finished or (held is not None and held.running):
            return
        link = next(
            (li for li in self.links if record.distributor in (li.address, li.configured)), None
        )
        if held is None:
            held = Held(record, link)
            self._jobs[job_id] = held
        else:
            held.record = record
        self._timers.cancel(job_id)
        self._ready.remove(job_id)
        logger.info("%s: job %s (%r) woken up from storage", self.name, job_id, record.name)
        self._schedule_at_epoch(held, record.run_at_ts)
