"""A node's stored jobs: resumed at start (`retry_jobs_at_start`), woken by pushes through
Redis (`jobreactor jobs retry`, a limit's slot freed on another node, an operator's op).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from jobreactor.cron import skip_missed_tick
from jobreactor.errors import StorageError
from jobreactor.job import JobStatus
from jobreactor.node.control import CONTROL_PREFIX, NodeControl
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.limits import WAKE_PREFIX, NodeLimits
from jobreactor.node.link import DistributorLink
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.node")


class Recovery:
    """Stored jobs back into the node; `parked`: resumed ones waiting for their distributor."""

    def __init__(
        self,
        node_name: str,
        storage: Storage,
        *,
        holdings: Holdings,
        at_epoch: Callable[[HeldJob, float], None],
        links: list[DistributorLink],
        limits: NodeLimits | None,
        control: NodeControl,
    ) -> None:
        self._name = node_name
        self._storage = storage
        self._holdings = holdings
        self._at_epoch = at_epoch
        self._links = links
        self._limits = limits
        self._control = control
        self._parked: dict[str, float] = {}  # job id -> due (epoch)

    async def recover(self) -> None:
        """`retry_jobs_at_start`: resume this node's unfinished jobs (docs/semantics.md §6)."""
        jobs = await self._storage.jobs_for(self._name, unfinished_only=True)
        now = time.time()
        known = {link.configured for link in self._links}
        for record in jobs:
            record.args["retrying"] = True
            held = HeldJob(record, None)
            self._holdings.jobs[record.id] = held
            if record.cron is not None and record.status != JobStatus.IN_PROGRESS:
                skip_missed_tick(record, now, self._name)
            due = now if record.status == JobStatus.IN_PROGRESS else max(now, record.run_at_ts)
            if record.distributor in known:
                # Wait for that distributor's welcome: it may have given the job to another
                # node while we were away (node_grace), and then we must not run it too.
                self._parked[record.id] = due
            else:
                self._at_epoch(held, due)  # nobody to ask: run it
        if jobs:
            logger.info(
                "%s resumed %d stored job(s), %d waiting for their distributor",
                self._name,
                len(jobs),
                len(self._parked),
            )

    def unpark(self, link: DistributorLink, drop: list[str], *, settled: bool) -> None:
        """`drop`: given to another node, never to run here; once `settled` (the distributor's
        last answer), the parked jobs from `link` run."""
        for job_id in drop:
            self._parked.pop(job_id, None)
        if not settled:
            return
        for job_id, due in list(self._parked.items()):
            waiting = self._holdings.jobs.get(job_id)
            if waiting is not None and waiting.link is link:
                del self._parked[job_id]
                self._at_epoch(waiting, due)

    async def listen(self) -> None:
        """Wake-ups pushed through Redis (`jobreactor jobs retry`): no polling, ever."""
        commands = self._storage.commands  # type: ignore[attr-defined]
        limits = self._limits
        async for job_id in commands(self._name, resync=True):
            try:
                if job_id.startswith(CONTROL_PREFIX):  # `jobreactor node quiet` and the like
                    self._control_op(job_id[len(CONTROL_PREFIX) :])
                elif job_id.startswith(WAKE_PREFIX) and limits is not None:
                    limits.wake(job_id[len(WAKE_PREFIX) :])  # a limit's slot freed up
                elif job_id:
                    await self._wake(job_id)
                else:  # resubscribed: messages sent meanwhile are lost, so look again
                    if limits is not None:
                        limits.wake_all()
                    for record in await self._storage.jobs_for(self._name, unfinished_only=True):
                        if not self._holdings.holds(record.id):
                            await self._wake(record.id)
            except StorageError as exc:
                logger.warning("%s: could not act on a wake-up: %s", self._name, exc)

    def _control_op(self, message: str) -> None:
        op, _, who = message.partition(":")
        try:
            self._control.apply(op, who=who or "redis")
        except ValueError as exc:
            logger.warning("%s: %s", self._name, exc)

    async def _wake(self, job_id: str) -> None:
        """(Re)schedule a stored job of ours from its record, e.g. a failed job to retry."""
        record = await self._storage.load(self._name, job_id)
        held = self._holdings.find(job_id)
        if record is None or record.is_finished or (held is not None and held.running):
            return
        link = next(
            (li for li in self._links if record.distributor in (li.address, li.configured)), None
        )
        if held is None:
            held = HeldJob(record, link)
            self._holdings.jobs[job_id] = held
        else:
            held.record = record
        self._holdings.unschedule(job_id)
        logger.info("%s: job %s (%r) woken up from storage", self._name, job_id, record.name)
        self._at_epoch(held, record.run_at_ts)
