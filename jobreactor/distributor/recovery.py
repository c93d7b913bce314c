"""Recovery: a distributor's journal read back (restart, adoption), fencing, and its stats.

A restart at the same address reads its own journal back (`_restore`); with discovery, a live
member of the group takes a dead one's journal (`adopt_journal`, driven by `Presence`). Either
way the jobs go through `_take_jobs`: never-sent ones are queued again, ones out on a node wait
for that node under the lease it holds (node_grace), and feedbacks registered by name are found
again. Closures can't be stored: their jobs still run, but their outcome reaches nobody.
Distributor (distributor.py) mixes this in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from jobreactor.discovery.keys import new_iid
from jobreactor.distributor.journal import Journal, assignee, sender
from jobreactor.distributor.outcomes import Outcomes, Waiting, unique_keys
from jobreactor.job import JobRecord
from jobreactor.metrics import METRICS, PENDING_SAMPLE, brief

if TYPE_CHECKING:
    from jobreactor.distributor.backlog import BacklogWatch
    from jobreactor.distributor.dispatch import Dispatcher
    from jobreactor.distributor.presence import Presence
    from jobreactor.distributor.session import NodeSession
    from jobreactor.distributor.tracking import InFlight, Tracker

logger = logging.getLogger("jobreactor.distributor")


class Recovery(Outcomes):
    """The journal half of Distributor. The attributes below are Distributor's."""

    if TYPE_CHECKING:
        address: str
        iid: str
        group: str
        started: float
        journal: Journal | None
        presence: Presence | None
        dispatcher: Dispatcher
        tracker: Tracker
        backlog_watch: BacklogWatch
        _sessions: dict[int, NodeSession]
        _takeovers: dict[str, asyncio.TimerHandle]

        def _arm_takeover(self, name: str) -> None: ...

        def _requeue(self, entry: InFlight) -> None: ...

        def resume_dispatch(self) -> None: ...

        def nodes(self) -> list[dict[str, Any]]: ...

    @property
    def journal_base(self) -> str:
        """The name of this address's journal (a restart at the address resumes it)."""
        return f"distributor:{self.address}"

    async def _restore(self) -> None:
        """Read back the journal of a previous run at this address (redis storage)."""
        assert self.journal is not None
        # Skip what this run already accepted (Redis came back before the read, see startup.py).
        jobs = [job for job in await self.journal.load() if job.id not in self._waiting]
        out_on = self._take_jobs(jobs)
        if jobs:
            logger.info(
                "distributor %s restored %d job(s) from its journal (%d out on nodes)",
                self.address,
                len(jobs),
                out_on,
            )

    async def adopt_journal(self, queue: str, owner: str) -> tuple[int, set[str]]:
        """Take the jobs of a dead distributor's journal into ours (Presence): how many, and
        the instances the nodes got them from (`owner`, and those it had adopted from)."""
        assert self.journal is not None
        jobs = [job for job in await self.storage.queue_load(queue) if job.id not in self._waiting]
        self._take_jobs(jobs, origin=owner)
        await self.journal.flush()  # ours now hold them: the old queue can go
        await self.storage.queue_remove(queue, [job.id for job in jobs])
        senders = {sender(job, owner) for job in jobs if assignee(job)}
        return len(jobs), senders | {owner}

    def _take_jobs(self, jobs: list[JobRecord], *, origin: str = "") -> int:
        """Jobs read from a journal (adopted from instance `origin`, or our own): queue the
        unsent, track the ones out on nodes (each node gets node_grace to claim them)."""
        out_on, adopted = 0, bool(origin)
        for job in jobs:
            # A feedback id equal to the job id was a closure: gone with the old process.
            success = job.on_success if job.on_success not in (None, job.id) else None
            error = job.on_error if job.on_error not in (None, job.id) else None
            self._waiting[job.id] = Waiting(success, error, None)
            keys = unique_keys(job)
            if keys:
                self._unique[job.id] = keys  # released at its start or end, as before
            node = assignee(job)
            if isinstance(node, str) and job.lease:
                seq = self.dispatcher.next_seq()
                sent_by = sender(job, origin) if adopted else ""
                self.tracker.adopt_orphan(job, node, job.lease, seq, sent_by)
                out_on += 1
                if adopted:
                    self.journal.assigned(job, node, job.lease, sent_by)  # type: ignore[union-attr]
            elif adopted:
                job.distributor = self.address
                self.journal.admit(job, None)  # type: ignore[union-attr]
            else:
                self.dispatcher.add(job)
        for name in {entry.node for entry in self.tracker.orphans_of_all()}:
            self._arm_takeover(name)
        return out_on

    def handed_over(self, name: str, origin: str) -> None:
        """Node `name` listed everything it holds from adopted instance `origin` (its last
        `Held` for it): a job of `origin` still recorded as out on it never reached it (the
        Jobs frame died with that process). It has not run there: queue it again."""
        lost = [entry for entry in self.tracker.orphans_of(name) if entry.origin == origin]
        for entry in lost:
            self.tracker.forget(entry.job_id)
            self._requeue(entry)
        if lost:
            logger.warning(
                "node %s never received %d job(s) of adopted distributor %s; queued again",
                name,
                len(lost),
                origin,
            )
            self.resume_dispatch()

    def fenced(self) -> None:
        """Our journal was adopted (this process stalled past adopt_grace): let go of its jobs.

        The adopter runs them now. Pending and in-flight jobs are forgotten here, their handles
        cancelled; node sessions close, so nodes meet the new instance id we take and hand the
        jobs they hold from the old one to the adopter.
        """
        logger.error(
            "distributor %s: its journal was adopted by another distributor of group %s "
            "(this process stalled longer than adopt_grace=%.0fs); its %d pending and %d "
            "in-flight job(s) are the adopter's now. Going on as a new instance",
            self.address,
            self.group,
            self.settings.adopt_grace,
            len(self.dispatcher),
            len(self.tracker),
        )
        reason = "adopted by another distributor"
        for job in self.dispatcher.drain():
            self._resolve_cancelled(job.id, reason, forget=False)  # the journal is not ours
        for entry in self.tracker.orphans_of_all() + [
            e for key in list(self._sessions) for e in self.tracker.jobs_on(key)
        ]:
            self.tracker.forget(entry.job_id)
            self._resolve_cancelled(entry.job_id, reason, forget=False)
        for handle in self._takeovers.values():
            handle.cancel()
        self._takeovers.clear()
        self.iid = new_iid()
        for session in list(self._sessions.values()):
            session.conn.close("distributor instance fenced", notify=True)

    def stats(self) -> dict[str, Any]:
        """What this distributor publishes with its registry beat (and dashboards read)."""
        return {
            "address": self.address,
            "iid": self.iid,
            "group": self.group,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "pending": len(self.dispatcher),
            "in_flight": len(self.tracker),
            "nodes": [
                {"name": n["name"], "free_credit": n["free_credit"], "in_flight": n["in_flight"]}
                for n in self.nodes()
            ],
            "adopted": list(self.presence.adopted) if self.presence is not None else [],
            "pending_jobs": [brief(job) for job in self.dispatcher.peek(PENDING_SAMPLE)],
            # Where a dashboard finds any pending job of ours by id (Redis storage only); for
            # nodes, whether anyone would adopt our jobs (None: memory storage, nobody).
            "journal": self.journal.queue if self.journal is not None else None,
            **self.backlog_watch.read().stats(),
            "metrics": METRICS.snapshot(),
        }
