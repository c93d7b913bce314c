"""Recovery: the jobs of whoever went away, nodes and distributors.

Nodes: a node that reconnects says what it holds (`take_over_held`); a node that leaves has
its unacknowledged jobs queued again (`node_left`), and a durable node's acknowledged ones wait
for it `node_grace` before they are taken over (`_take_over`); a job given away is remembered,
so its first node drops it if it comes back holding it.

Distributors: a restart at the same address reads its own journal back (`restore`); with
discovery, a live member of the group takes a dead one's journal (`adopt_journal`, driven by
`Presence`). Either way the jobs go through `_take_jobs`: never-sent ones are queued again,
ones out on a node wait for that node under the lease it holds (node_grace), and feedbacks
registered by name are found again. Closures can't be stored: their jobs still run, but their
outcome reaches nobody. A journal adopted while this process stalled is let go (`let_go`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.distributor.handover import log_lost
from jobreactor.distributor.journal import Journal, assignee, sender
from jobreactor.distributor.outcomes import Outcomes, Waiting, unique_keys
from jobreactor.distributor.tracking import InFlight, Tracker
from jobreactor.job import JobRecord
from jobreactor.metrics import JobMetrics
from jobreactor.protocol import Nack, Return
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.distributor")


def journal_base(address: str) -> str:
    """The name of an address's journal (a restart at the address resumes it)."""
    return f"distributor:{address}"


# Jobs remembered as given away from a node (so it drops them if it comes back holding one).
_GIVEN_AWAY_LIMIT = 1_000_000


class Recovery:
    """`requeue` queues a job again (JobFlow), `dispatch` runs a dispatch round, `connected`
    says whether a node of that name is connected now."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        tracker: Tracker,
        outcomes: Outcomes,
        node_grace: float,
        metrics: JobMetrics | None,
        requeue: Callable[[InFlight], None],
        dispatch: Callable[[], None],
        connected: Callable[[str], bool],
    ) -> None:
        self.dispatcher = dispatcher
        self.tracker = tracker
        self.outcomes = outcomes
        self.node_grace = node_grace
        self.journal: Journal | None = None
        self.address = ""
        self._metrics = metrics
        self._requeue = requeue
        self._dispatch = dispatch
        self._connected = connected
        # Jobs we took from a node and sent elsewhere (or queued again): if that node comes
        # back still holding one, it must drop it. Bounded: the oldest entries go first.
        self._given_away: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._takeovers: dict[str, asyncio.TimerHandle] = {}

    def bind(self, address: str, journal: Journal | None) -> None:
        self.address, self.journal = address, journal

    # --- nodes coming and going ---------------------------------------------------------------

    def take_over_held(self, key: int, name: str, held: list[tuple[str, int]]) -> list[str]:
        """Settle the jobs node `name` (re)connecting as session `key` says it holds; return
        the ones it must drop.

        Still ours under that lease: it keeps them. Queued again after it vanished but not sent
        anywhere yet: it gets them back. Given to another node: it drops them. Unknown to us
        (this distributor restarted): it keeps them; their reports will be ignored.
        """
        drop: list[str] = []
        for job_id, lease in held:
            entry = self.tracker.get(job_id)
            if entry is not None:
                if entry.conn == key:
                    continue  # already sent again to this very connection: it keeps it
                if entry.node == name and entry.lease == lease:
                    self.tracker.rebind(job_id, key)
                else:
                    drop.append(job_id)
                continue
            if self._given_away.get(job_id) != name:
                continue
            pending = self.dispatcher.remove(job_id)
            if pending is None:
                drop.append(job_id)  # re-sent elsewhere, finished or cancelled meanwhile
                continue
            del self._given_away[job_id]
            job, seq = pending
            self.tracker.issue(job, key, name, seq, lease=lease)
        return drop

    def node_back(self, name: str) -> None:
        """Node `name` joined: it has node_grace to claim the jobs recorded as out on it."""
        takeover = self._takeovers.pop(name, None)
        if takeover is not None:
            takeover.cancel()
        if self.tracker.orphan_count(name):  # not claimed (yet)
            self._arm_takeover(name)

    def node_left(self, key: int, name: str, *, durable: bool, was_ready: bool, why: str) -> None:
        """Session `key` of node `name` closed: what it had not acknowledged (a durable node:
        stored) goes out again; the rest waits node_grace for it."""
        requeue = self.tracker.detach(key, keep_acked=durable)
        if was_ready:
            kept = self.tracker.orphan_count(name) if durable else 0
            logger.info(
                "%s disconnected (%s); %d job(s) back to the queue, %d kept for it for %.0fs",
                name,
                why,
                len(requeue),
                kept,
                self.node_grace,
            )
            if kept and not self._connected(name):
                self._arm_takeover(name)
        for entry in requeue:
            self._give_back(entry)

    def left_while_stopping(self, key: int, name: str, *, was_ready: bool, why: str) -> None:
        """A session closed after `stop()` began: nothing is requeued or dispatched (the node
        may still run what it holds: sending it elsewhere could run it twice). With a journal
        the jobs stay recorded as out on that node (a restart or an adopter waits for it);
        without one their outcome is lost here, and said so."""
        entries = self.tracker.jobs_on(key)
        for entry in entries:
            self.tracker.forget(entry.job_id)
        if was_ready:
            logger.info("%s disconnected (%s); the distributor stops", name, why)
        if entries and self.journal is None:
            log_lost(
                [(e.job_id, e.name) for e in entries],
                f"distributor stopping: node {name} left with jobs whose outcome "
                "is lost here (memory storage; they are not sent to another node)",
            )
            for entry in entries:
                self.outcomes.resolve_cancelled(entry.job_id, "abandoned: the distributor stopped")

    def on_nack(self, key: int, name: str, message: Nack) -> None:
        entry = self.tracker.by_lease(key, message.lease)
        if entry is not None:
            logger.warning(
                "%s could not store job %s (%s); requeued", name, entry.job_id, message.reason
            )
            self.tracker.forget(entry.job_id)
            self._give_back(entry)
        # No credit comes back with a nack: the node grants it again once it can store.

    def on_return(self, key: int, message: Return) -> None:
        """A stopping node hands back jobs it has not started: they go out again."""
        for job_id in message.job_ids:
            entry = self.tracker.get(job_id)
            if entry is not None and entry.conn == key:
                self.tracker.forget(job_id)
                self._give_back(entry)
        self.dispatcher.set_credits(key, 0)

    def _give_back(self, entry: InFlight) -> None:
        """Remembered as given away from its node, and queued again."""
        self._given_away[entry.job_id] = entry.node
        self._given_away.move_to_end(entry.job_id)
        while len(self._given_away) > _GIVEN_AWAY_LIMIT:
            self._given_away.popitem(last=False)
        self._requeue(entry)

    def _arm_takeover(self, name: str) -> None:
        old = self._takeovers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._takeovers[name] = loop.call_later(self.node_grace, self._take_over, name)

    def _take_over(self, name: str) -> None:
        """`name` stayed away past node_grace, or is back without claiming some of the jobs
        recorded as out on it (it never got them): they go to other nodes
        (docs/semantics.md §6)."""
        self._takeovers.pop(name, None)
        orphans = self.tracker.orphans_of(name)
        if not orphans:
            return
        logger.warning(
            "node %s %s within node_grace=%.0fs: %d job(s) taken over",
            name,
            "did not claim its jobs" if self._connected(name) else "did not come back",
            self.node_grace,
            len(orphans),
        )
        for entry in orphans:
            if self._metrics is not None:
                self._metrics.taken_over[self._metrics.label(entry.name)] += 1
            self.tracker.forget(entry.job_id)
            self._give_back(entry)
        self._dispatch()

    def cancel_takeovers(self) -> None:
        for handle in self._takeovers.values():
            handle.cancel()
        self._takeovers.clear()

    def handed_over(self, name: str, origin: str) -> None:
        """Node `name` listed everything it holds from adopted instance `origin`: a job of
        `origin` still recorded as out on it never reached it (the Jobs frame died with that
        process). It has not run there: queue it again."""
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
            self._dispatch()

    # --- journals -----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Read back the journal of a previous run at this address (redis storage)."""
        assert self.journal is not None
        # Skip what this run already accepted (Redis came back before the read, see startup.py).
        waiting = self.outcomes.waiting
        jobs = [job for job in await self.journal.load() if job.id not in waiting]
        out_on = self._take_jobs(jobs)
        if jobs:
            logger.info(
                "distributor %s restored %d job(s) from its journal (%d out on nodes)",
                self.address,
                len(jobs),
                out_on,
            )

    async def adopt_journal(self, storage: Storage, queue: str, owner: str) -> tuple[int, set[str]]:
        """Take the jobs of a dead distributor's journal into ours (Presence): how many, and
        the instances the nodes got them from (`owner`, and those it had adopted from)."""
        assert self.journal is not None
        waiting = self.outcomes.waiting
        jobs = [job for job in await storage.queue_load(queue) if job.id not in waiting]
        self._take_jobs(jobs, origin=owner)
        await self.journal.flush()  # ours now hold them: the old queue can go
        await storage.queue_remove(queue, [job.id for job in jobs])
        senders = {sender(job, owner) for job in jobs if assignee(job)}
        return len(jobs), senders | {owner}

    def _take_jobs(self, jobs: list[JobRecord], *, origin: str = "") -> int:
        """Jobs read from a journal (adopted from instance `origin`, or our own): queue the
        unsent, track the ones out on nodes (each node gets node_grace to claim them)."""
        out_on, adopted, journal = 0, bool(origin), self.journal
        assert journal is not None
        for job in jobs:
            # A feedback id equal to the job id was a closure: gone with the old process.
            success = job.on_success if job.on_success not in (None, job.id) else None
            error = job.on_error if job.on_error not in (None, job.id) else None
            self.outcomes.expect(job.id, unique_keys(job), Waiting(success, error, None))
            node = assignee(job)
            if isinstance(node, str) and job.lease:
                seq = self.dispatcher.next_seq()
                sent_by = sender(job, origin) if adopted else ""
                self.tracker.adopt_orphan(job, node, job.lease, seq, sent_by)
                out_on += 1
                if adopted:
                    journal.assigned(job, node, job.lease, sent_by)
            elif adopted:
                job.distributor = self.address
                journal.admit(job, None)
            else:
                self.dispatcher.add(job)
        for name in {entry.node for entry in self.tracker.orphans_of_all()}:
            self._arm_takeover(name)
        return out_on

    def let_go(self, keys: list[int], group: str, adopt_grace: float) -> None:
        """Our journal was adopted by a member of `group` (fenced): forget every pending and
        in-flight job (on the sessions `keys` or waiting for their node), their handles
        cancelled, the journal kept (it is the adopter's now)."""
        logger.error(
            "distributor %s: its journal was adopted by another distributor of group %s "
            "(this process stalled longer than adopt_grace=%.0fs); its %d pending and %d "
            "in-flight job(s) are the adopter's now. Going on as a new instance",
            self.address,
            group,
            adopt_grace,
            len(self.dispatcher),
            len(self.tracker),
        )
        reason = "adopted by another distributor"
        for job in self.dispatcher.drain():
            self.outcomes.resolve_cancelled(job.id, reason, forget=False)
        for entry in self.tracker.orphans_of_all() + [
            e for key in keys for e in self.tracker.jobs_on(key)
        ]:
            self.tracker.forget(entry.job_id)
            self.outcomes.resolve_cancelled(entry.job_id, reason, forget=False)
        self.cancel_takeovers()
