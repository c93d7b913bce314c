"""JobFlow: a job's way through the distributor, the hot path.

Accepted (`submit_many`: stored first when there is a journal), queued in the `Dispatcher`,
sent to a node with credit (`dispatch`: leased by the `Tracker`, packed into the session's
next Jobs frame), acknowledged (`on_ack`), reported (`on_reports`: checked against the lease,
counted, handed to `Outcomes`). What happens to jobs when nodes come and go is `Recovery`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from jobreactor import otel
from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.distributor.handoff import label
from jobreactor.distributor.journal import Journal
from jobreactor.distributor.outcomes import Feedback, Outcomes, awaited
from jobreactor.distributor.session import NodeSession
from jobreactor.distributor.status import Tasks
from jobreactor.distributor.tracking import InFlight, Tracker
from jobreactor.handle import JobHandle
from jobreactor.job import JobRecord
from jobreactor.metrics import JobMetrics
from jobreactor.protocol import Ack, Cancel, ReportItem, Reports

logger = logging.getLogger("jobreactor.distributor")

MAX_TRACED = 100_000  # traced jobs whose feedback span we can parent (beyond: not parented)

Submission = tuple[JobRecord, Feedback | str | None, Feedback | str | None, JobHandle | None]


class JobFlow:
    """Queue, send, acknowledge, report. `session_of` finds the open session of a key;
    `paused` says dispatch must wait (startup, hand-over, a stalled journal owner);
    `backlog_arm` starts the watch for jobs no node may run; `tasks` run feedbacks."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        tracker: Tracker,
        outcomes: Outcomes,
        metrics: JobMetrics | None,
        session_of: Callable[[int], NodeSession | None],
        paused: Callable[[], bool],
        backlog_arm: Callable[[], None],
        tasks: Tasks,
    ) -> None:
        self.dispatcher = dispatcher
        self.tracker = tracker
        self.outcomes = outcomes
        self.journal: Journal | None = None  # redis storage: from `bind`, at start
        self.address = ""
        self._metrics = metrics
        self._session_of = session_of
        self._paused = paused
        self._backlog_arm = backlog_arm
        self._tasks = tasks
        self.idle = asyncio.Event()  # set whenever work may have ended (waiters re-check)
        self.idle.set()
        self._traces: dict[str, str] = {}  # traced jobs' traceparent until their final report

    def bind(self, address: str, journal: Journal | None) -> None:
        """At start: the address jobs are stamped with, and the journal (redis storage)."""
        self.address, self.journal = address, journal

    # --- accepting ----------------------------------------------------------------------------

    def submit_many(self, items: list[Submission]) -> None:
        address, journal, metrics = self.address, self.journal, self._metrics
        waiting, dispatcher, weak = self.outcomes.waiting, self.dispatcher, self.outcomes.weak
        for job, success, error, handle in items:
            label(job, address, success, error)
            if metrics is not None:
                name = job.name
                metrics.enqueued[name if name in metrics.known else metrics.label(name)] += 1
            waiting[job.id] = awaited(success, error, handle, weak)
            if job.trace is not None and len(self._traces) < MAX_TRACED:
                self._traces[job.id] = job.trace  # its feedback runs in its trace (otel.py)
            if journal is not None and (handle is None or handle._durable is not True):
                journal.admit(job, handle)  # dispatched once stored (see admitted)
                continue
            if handle is not None and handle._durable is None:
                handle._stored()  # memory: held here, best effort
            dispatcher.add(job)
        self.dispatch()

    def admitted(self, jobs: list[JobRecord]) -> None:
        """The journal stored these: queue the ones still wanted."""
        waiting = self.outcomes.waiting
        for job in jobs:
            if job.id in waiting:  # not cancelled while it was being stored
                self.dispatcher.add(job)
            elif self.journal is not None:
                self.journal.remove(job.id)  # its removal may have landed before its store
        self.dispatch()

    def refused(self, jobs: list[JobRecord]) -> None:
        """The journal could not store these."""
        for job in jobs:
            self.outcomes.refused(job.id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending, scheduled or periodic job wherever it is. True if it was found."""
        if self.dispatcher.remove(job_id) is not None:
            self.outcomes.resolve_cancelled(job_id)
            return True
        entry = self.tracker.request_cancel(job_id)
        if entry is None:
            if job_id in self.outcomes.waiting and self.journal is not None:
                self.outcomes.resolve_cancelled(job_id)  # still being stored: never dispatched
                return True
            return False
        session = self._session_of(entry.conn) if entry.conn is not None else None
        if session is not None:
            session.conn.send(Cancel(job_id))
        return True

    def unfinished(self) -> int:
        """One-shot jobs accepted and not finished (pending here or out on nodes) + pending."""
        get = self.tracker.get
        return len(self.dispatcher) + sum(
            1
            for job_id in self.outcomes.waiting
            if (entry := get(job_id)) is not None and not entry.periodic
        )

    async def wait_idle(self) -> None:
        """Until no job is pending, no one-shot job is out on a node, every feedback has run."""
        while self.unfinished() or self._tasks:
            if self._tasks:
                await self._tasks.wait()
                continue
            self.idle.clear()
            await self.idle.wait()

    async def drain(self, deadline: float, connected: Callable[[], int]) -> None:
        """While nodes are `connected` (how many), wait (bounded) for pending and one-shot
        jobs to end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while connected() and (len(self.dispatcher) or self._unfinished_one_shots()):
                    self.idle.clear()
                    await self.idle.wait()

    def _unfinished_one_shots(self) -> bool:
        get = self.tracker.get
        return any(
            not entry.periodic
            for job_id in self.outcomes.waiting
            if (entry := get(job_id)) is not None
        )

    # --- sending ------------------------------------------------------------------------------

    def dispatch(self) -> None:
        if self._paused():
            return
        metrics, journal, tracker = self._metrics, self.journal, self.tracker
        session_of = self._session_of
        held_back: list[tuple[NodeSession, int, dict[str, Any]]] = []
        sent_to: set[NodeSession] = set()
        for key, job, seq in self.dispatcher.assign():
            if metrics is not None:
                name = job.name
                metrics.dispatched[name if name in metrics.known else metrics.label(name)] += 1
            session = session_of(key)
            assert session is not None  # the dispatcher knows only open sessions' keys
            # Sent, and kept as it is by the tracker (not the JobRecord). A record that can't
            # be encoded fails alone when its frame is built (session.py), its credit given back.
            record = job.to_dict()
            lease = tracker.issue(job, key, session.node_name, seq, wire=record)
            if journal is None:
                session.queue_job(lease, record)
                sent_to.add(session)
                continue
            journal.assigned(job, session.node_name, lease)
            held_back.append((session, lease, record))
        if held_back:
            # Sent once the assignment is stored: a distributor killed before that restarts
            # with the job unsent (and sends it once), never unsent-but-running (issue 16).
            journal.when_durable(lambda: _send_assigned(held_back))  # type: ignore[union-attr]
        for session in sent_to:
            session.conn.flush_now()
        if not len(self.dispatcher):
            self.idle.set()
        else:
            self._backlog_arm()  # jobs wait: check for ones no node may run (backlog.py)

    def job_unsendable(self, job_id: str, reason: str, key: int | None = None) -> None:
        """A job that can't be encoded fails alone: forgotten here, its handle resolved; the
        credit it took on connection `key` (if it was being sent) is free again."""
        if key is not None:
            self.dispatcher.grant(key, 1)
        logger.error("job %s can't be sent to a node and is dropped: %s", job_id, reason)
        self.tracker.forget(job_id)
        self.outcomes.resolve_cancelled(
            job_id, f"refused: it can't be encoded for the wire ({reason})"
        )

    def requeue(self, entry: InFlight) -> None:
        """A job back from a node (gone, nack, returned, taken over): queued again."""
        if entry.cancel_requested:
            self.outcomes.resolve_cancelled(entry.job_id)
            return
        job = entry.job  # rebuilt from its packed form, once
        if self.journal is not None:
            self.journal.unassigned(job)
        self.dispatcher.add(job, seq=entry.seq)

    # --- what nodes say -----------------------------------------------------------------------

    def on_ack(self, session: NodeSession, message: Ack) -> bool:
        """Jobs acknowledged, credit granted; False if no credit was gained (no dispatch)."""
        key = session.key
        for lease in message.leases:
            self.tracker.ack(key, lease)
        changed = self.dispatcher.grant(key, message.credits)
        session.state.count_ack(changed or bool(message.leases))
        return changed

    def on_reports(self, session: NodeSession, message: Reports) -> None:
        for item in message.items:
            self._on_report(session, item)
        upto = message.first_seq + len(message.items) - 1
        if self.journal is None:
            session.ack_reports(upto)
        else:  # acknowledged once the removals they caused are stored (journal.py)
            self.journal.when_durable(lambda: session.ack_reports(upto))

    def _on_report(self, session: NodeSession, item: ReportItem) -> None:
        entry = self.tracker.check_report(session.key, item.job_id, item.lease)
        if entry is None:  # restored as out on this node, finished before it said so
            name = session.node_name
            entry = self.tracker.claim_reported(item.job_id, name, item.lease, session.key)
        if entry is None:
            logger.debug(
                "stale report for job %s (lease %d) from %s rejected",
                item.job_id,
                item.lease,
                session.node_name,
            )
            return
        if item.final:
            self.tracker.forget(item.job_id)
            if self.journal is not None:
                self.journal.remove(item.job_id)
        metrics = self._metrics
        if metrics is not None:  # outcomes are counted here, once (metrics.py)
            name = entry.name
            if item.outcome == "success" and name in metrics.known:
                metrics.succeeded[name] += 1  # the usual report, without a call
            else:
                metrics.count_report(name, item.outcome, item.final, item.args)
        if self._traces and item.final and item.job_id in self._traces:
            trace = self._traces.pop(item.job_id)
            with otel.feedback_span(trace, item.job_id, entry.name, item.outcome):
                self.outcomes.settle_report(item, entry.name)
        else:
            self.outcomes.settle_report(item, entry.name)
        if item.final:
            self.idle.set()


def _send_assigned(jobs: list[tuple[NodeSession, int, dict[str, Any]]]) -> None:
    """Send jobs whose assignment is stored, to the sessions still open (a closed one's jobs
    were queued again when it closed)."""
    for session, lease, record in jobs:
        if session.conn.is_open:
            session.queue_job(lease, record)
