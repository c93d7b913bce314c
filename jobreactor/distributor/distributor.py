"""Distributor: accepts nodes, dispatches jobs by credit, routes feedback back to the app.

A coordinator of parts, each with one job (docs/architecture.md):
- `Listener` (binding.py): the listening sockets; `NodeRegistry` (nodes.py): the node
  sessions, each a `NodeSession` shell (session.py) around a sans-IO `SessionState`;
- `JobFlow` (flow.py): accept, queue (`Dispatcher`), send (`Tracker`), acknowledge, report;
- `Outcomes` (outcomes.py): feedbacks, handles, unique keys, batch completion;
- `Recovery` (recovery.py): the jobs of nodes and distributors that went away;
- `Journal` (journal.py, redis storage), `Presence` (presence.py, discovery), `Startup`,
  `BacklogWatch`, `NodeCommands`.
The parts talk through the callbacks wired here. Everything runs on the reactor's loop; the
app's threads reach it only through `Reactor`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from jobreactor.config import ReactorConfig
from jobreactor.discovery.keys import new_iid
from jobreactor.distributor.backlog import BacklogWatch
from jobreactor.distributor.binding import Listener, advertised, warn_if_unfound
from jobreactor.distributor.commands import NodeCommands
from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.distributor.flow import JobFlow
from jobreactor.distributor.guard import check_bind_is_safe
from jobreactor.distributor.handover import Leaving, drop_the_rest, hand_over
from jobreactor.distributor.journal import Journal
from jobreactor.distributor.nodes import NodeRegistry
from jobreactor.distributor.outcomes import Feedback, Outcomes
from jobreactor.distributor.recovery import Recovery, journal_base
from jobreactor.distributor.session import NodeSession
from jobreactor.distributor.startup import Startup
from jobreactor.distributor.status import Status, Tasks
from jobreactor.distributor.tracking import Tracker
from jobreactor.handle import JobHandle
from jobreactor.job import JobRecord
from jobreactor.metrics import PENDING_SAMPLE, JobMetrics, brief
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    Ack,
    CommandResult,
    Dropped,
    HeldJobs,
    Message,
    Nack,
    Reports,
    Return,
    Welcome,
)
from jobreactor.protocol.auth import secret_bytes
from jobreactor.ratelimit import RateLimitedLog
from jobreactor.storage import MemoryStorage, Storage
from jobreactor.storage.queue_sync import SyncQueueWriter

if TYPE_CHECKING:  # imports redis-py: loaded at start, with a discovery_url only
    from jobreactor.distributor.presence import Presence

logger = logging.getLogger("jobreactor.distributor")


class Distributor:
    def __init__(
        self,
        settings: ReactorConfig,
        *,
        secret: str | None = None,
        advertise: str | None = None,
        storage: Storage | None = None,
        discovery_url: str | None = None,
        group: str | None = None,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.iid = new_iid()  # this instance; nodes see it in Welcome (a recycled port shows)
        self.started = time.time()
        self.discovery_url = discovery_url if discovery_url is not None else settings.discovery_url
        self.group = group if group is not None else settings.group
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.secret = secret_bytes(secret if secret is not None else settings.secret)
        self.address = advertise or ""
        self._advertise = advertise
        self.metrics = metrics if metrics is not None else JobMetrics()  # its own: no global
        self.status = Status()
        self.tasks = Tasks()
        self.presence: Presence | None = None  # with discovery_url: from start()
        self.journal: Journal | None = None  # with redis storage: from start()
        # With redis storage: writes the journal from the enqueuing thread (storage/queue_sync).
        self.sync_writer: SyncQueueWriter | None = None
        self.peer_log = RateLimitedLog(logger, logging.WARNING, 10.0)
        self.dispatcher = Dispatcher(strict_node=settings.always_use_specified_node)
        self.tracker = Tracker()
        self.commands = NodeCommands()
        self._wire_parts(self.metrics if settings.metrics else None)
        self.metrics.track(self)

    def _wire_parts(self, counting: JobMetrics | None) -> None:
        settings, spawn = self.settings, self.tasks.spawn
        self.outcomes = Outcomes(self.storage, settings.unique_ttl, spawn=spawn)
        self.observers = self.outcomes.observers
        self.backlog_watch = BacklogWatch(
            self.dispatcher,
            self.tracker,
            self.status,
            warn_after=settings.warn_no_node_after,
            strict_node=settings.always_use_specified_node,
            label=self.metrics.label,
            where=lambda: self.address,
        )
        self.registry = NodeRegistry(
            settings,
            self.secret,
            peer_log=self.peer_log,
            deliver=self._on_node_message,
            on_ready=self._on_node_ready,
            on_gone=self._on_session_closed,
            unsendable=lambda job_id, reason, key: self.flow.job_unsendable(job_id, reason, key),
            spawn=spawn,
        )
        self.flow = JobFlow(
            dispatcher=self.dispatcher,
            tracker=self.tracker,
            outcomes=self.outcomes,
            metrics=counting,
            session_of=self.registry.sessions.get,
            paused=self._paused,
            backlog_arm=self.backlog_watch.arm,
            tasks=self.tasks,
        )
        self._wire_recovery(counting)

    def _wire_recovery(self, counting: JobMetrics | None) -> None:
        """The parts that act on node and journal events, and the app's calls bound to the
        part that answers them alone."""
        settings = self.settings
        self.recovery = Recovery(
            dispatcher=self.dispatcher,
            tracker=self.tracker,
            outcomes=self.outcomes,
            node_grace=settings.node_grace,
            metrics=counting,
            requeue=self.flow.requeue,
            dispatch=self.flow.dispatch,
            connected=self.registry.by_name.__contains__,
        )
        self.startup = Startup(
            self._join_and_restore, self.flow.dispatch, settings.reconnect_interval
        )
        self.listener = Listener(self.registry.connection)
        self.submit_many = self.flow.submit_many
        self.cancel = self.flow.cancel
        self.unfinished = self.flow.unfinished
        self.wait_idle = self.flow.wait_idle
        self.resume_dispatch = self.flow.dispatch
        self.admit = self.outcomes.admit
        self.on_batch_complete = self.outcomes.on_batch_complete
        self.wait_for_node = self.registry.wait_for_node

    def __repr__(self) -> str:
        return (
            f"<Distributor {self.address} nodes={len(self.registry)} "
            f"pending={len(self.dispatcher)} in_flight={len(self.tracker)}>"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port); return the bound address.

        Raises `InsecureBind` for a non-loopback address with neither a secret nor TLS client
        certificates, unless the `insecure` setting allows it; `CannotListen` if it can't bind.

        Journal and presence first, accepting nodes last: a node that connects before the
        journal is read back would report jobs we don't know yet, and those reports would be
        lost (issue 16). Until then connections wait in the listen backlog.
        """
        check_bind_is_safe(host, self.secret is not None, ssl_context, self.settings.insecure)
        self.outcomes.hold_weakly(asyncio.get_running_loop())
        bound = self.listener.listen(host, port)  # CannotListen (no half-made server)
        try:
            self._prepare(advertised(self._advertise, host, bound[1]))
            # Join, own and read back the journal, then accept nodes: now, or once Redis is back.
            await self.startup.run(self.address, lambda: self.listener.serve(ssl_context))
        except BaseException:
            self.listener.close()
            if self.presence is not None:
                await self.presence.abandon()  # a failed start leaves Redis as it found it
            raise
        if port == 0 and not self.discovery_url and not self._advertise:
            after = self.settings.warn_no_node_after
            if after > 0:
                loop = asyncio.get_running_loop()
                has_nodes, closed = lambda: bool(self.registry), lambda: self.status.closed
                warn_if_unfound(loop, after, self.address, has_nodes, closed)
        logger.info("Distributor listens %s:%d (advertised as %s)", *bound, self.address)
        return bound

    def _prepare(self, address: str) -> None:
        """The address is known: the journal (redis storage) and presence (discovery)."""
        self.address = address
        if self.storage.durable:
            self.journal = Journal(
                self.storage,
                journal_base(address),
                self.settings.reconnect_interval,
                self.flow.admitted,
                self.flow.refused,
            )
            make_writer = getattr(self.storage, "sync_writer", None)
            if make_writer is not None:
                self.sync_writer = make_writer(self.settings.enqueue_timeout)
            self.outcomes.bind(self.journal.remove)
        self.flow.bind(address, self.journal)
        self.recovery.bind(address, self.journal)
        if self.discovery_url:
            from jobreactor.distributor.presence import Presence  # imports redis-py

            self.presence = Presence(self, self.discovery_url, self.group)

    async def _join_and_restore(self) -> None:
        """Join the group (owning the journal first) and read the journal back."""
        if self.presence is not None:
            await self.presence.start()  # owns the journal first: it may pick another one
        if self.journal is not None:
            await self.recovery.restore()

    async def stop(self, timeout: float | None = None, *, handover: bool = False) -> None:
        """Stop accepting, let connected nodes finish what was sent (bounded), then close.

        `handover` (the web recipes' worker exit): a member of a discovery group does not
        wait for its jobs but hands them to its group (handover.py); elsewhere it drains.
        """
        if self.status.closed:
            return
        self.status.closed = True
        self.registry.refusing = True  # a connection accepted from now on is closed at once
        await self.startup.stop()
        self.listener.close()
        self.backlog_watch.close()
        self.recovery.cancel_takeovers()
        deadline = self.settings.shutdown_timeout if timeout is None else timeout
        drain = functools.partial(self.flow.drain, connected=self.registry.__len__)
        parts = (self.dispatcher, self.tracker, self.outcomes, drain)
        leaving = Leaving(self.address, self.presence, self.journal, self.status, *parts)
        if handover and self.presence is not None:
            await hand_over(leaving, self.registry.goodbye_all, deadline)
        else:
            await drain(deadline)
            await drop_the_rest(leaving, self.registry.goodbye_all)
        await self.tasks.wait(deadline)
        await self.listener.wait_closed()
        # A connection accepted just before the listener closed gets its session a loop turn
        # later, after the goodbyes: close it too, or the loop closes with its socket open.
        self.registry.close_all("the distributor stopped")
        if self.journal is not None:
            await self.journal.aclose()
        if self.sync_writer is not None:
            self.sync_writer.close()
        await self.storage.aclose()

    # --- the app's calls ------------------------------------------------------------------------

    def submit(
        self,
        job: JobRecord,
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
        handle: JobHandle | None = None,
    ) -> None:
        """Queue a validated job (on the loop) and send it out if a node has credit."""
        self.flow.submit_many([(job, success, error, handle)])

    def withdraw(self, job_ids: list[str]) -> None:
        """Jobs whose enqueue failed or timed out in the app's thread (`sync_writer`): the
        write may still land, so the journal refuses it (they were never queued here)."""
        if self.journal is not None:
            self.journal.withdraw(job_ids)

    @property
    def named_feedbacks(self) -> dict[str, Feedback]:
        """Feedbacks registered by name (JR.register_feedback): a restart finds them again."""
        return self.outcomes.named_feedbacks

    @named_feedbacks.setter
    def named_feedbacks(self, named: dict[str, Feedback]) -> None:
        self.outcomes.named_feedbacks = named

    def address_port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def pending_count(self) -> int:
        return len(self.dispatcher)

    def nodes(self) -> list[dict[str, Any]]:
        """The ready nodes: name, address, job names, free credit, storage, jobs out on it."""
        return self.registry.describe(self.dispatcher.nodes, self.tracker.count_on)

    async def command(self, op: str, arg: str, timeout: float) -> list[CommandResult]:
        """Ask every ready node to do `op(arg)` in its storage (protocol.Command)."""
        return await self.commands.ask(self.registry.ready(), op, arg, timeout)

    async def command_node(
        self, name: str, op: str, arg: str, timeout: float
    ) -> CommandResult | None:
        """Ask the node named `name` alone (node/control.py ops); None if it isn't connected."""
        session = self.registry.by_name.get(name)
        if session is None:
            return None
        answers = await self.commands.ask([session], op, arg, timeout)
        return answers[0] if answers else None

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
            "metrics": self.metrics.snapshot(),
        }

    # --- what presence (discovery) asks -------------------------------------------------------

    async def adopt_journal(self, queue: str, owner: str) -> tuple[int, set[str]]:
        """Take the jobs of a dead distributor's journal into ours (Presence)."""
        return await self.recovery.adopt_journal(self.storage, queue, owner)

    def fenced(self) -> None:
        """Our journal was adopted (this process stalled past adopt_grace): let go of its jobs.

        The adopter runs them now. Pending and in-flight jobs are forgotten here, their handles
        cancelled; node sessions close, so nodes meet the new instance id we take and hand the
        jobs they hold from the old one to the adopter.
        """
        group, grace = self.group, self.settings.adopt_grace
        self.recovery.let_go(list(self.registry.sessions), group, grace)
        self.iid = new_iid()
        self.registry.close_all("distributor instance fenced")

    # --- what sessions tell -------------------------------------------------------------------

    def _paused(self) -> bool:
        if self.startup.pending:
            return True  # the journal is not read back yet (Redis away at start)
        if self.status.sealed:
            return True  # handing over: the group dispatches these jobs now
        # Back from a stall: the next beat round says whether these jobs are ours.
        return self.presence is not None and self.presence.hold_dispatch()

    def _on_node_ready(self, session: NodeSession) -> None:
        hello = session.hello
        assert hello is not None
        if self.status.sealed or self.status.closed:
            # Handed over, or stopping, while it shook hands: it must meet another distributor.
            session.goodbye("distributor stopping")
            return
        drop = self.recovery.take_over_held(session.key, hello.node_name, hello.held)
        self.registry.join(session)
        self.recovery.node_back(hello.node_name)
        held_now = self.tracker.count_on(session.key)
        self.dispatcher.add_node(
            session.key,
            hello.node_name,
            hello.job_names,
            hello.credits,
            max(hello.window, hello.credits, 1),  # its free credit is never counted above this
        )
        self.metrics.register(hello.job_names)  # these names get their own metric series
        session.conn.send(Welcome(PROTOCOL_VERSION, self.address, drop, self.iid))
        logger.info(
            "%s ready to work (%d credits, %d jobs kept)", hello.node_name, hello.credits, held_now
        )
        self.flow.dispatch()

    def _on_session_closed(self, session: NodeSession, was_ready: bool, reason: str) -> None:
        self.dispatcher.remove_node(session.key)
        self.commands.session_gone(session.key)
        name, key = session.node_name, session.key
        if self.status.closed:
            self.recovery.left_while_stopping(key, name, was_ready=was_ready, why=reason)
            self.flow.idle.set()
            return
        durable = bool(session.hello and session.hello.storage == "redis")
        self.recovery.node_left(key, name, durable=durable, was_ready=was_ready, why=reason)
        self.flow.dispatch()
        self.flow.idle.set()

    def _on_node_message(self, session: NodeSession, message: Message) -> None:
        if self.status.sealed:
            return  # handed over: unacknowledged, the node sends it to the group's adopter
        if type(message) is Ack or type(message) is Return:  # the two check_bounds bounds
            session.state.check_bounds(message, self.tracker.count_on(session.key))
        match message:
            case Ack():
                if not self.flow.on_ack(session, message):
                    return  # no credit gained: no dispatch round
            case Reports():
                self.flow.on_reports(session, message)
            case Nack():
                self.recovery.on_nack(session.key, session.node_name, message)
            case CommandResult():
                if message.job:
                    # A failed job the node took out of its storage for JR.retry: enqueued
                    # again with the same id and no feedbacks, even if nobody waits any more.
                    job = JobRecord.from_dict(message.job)
                    job.node, job.lease = None, 0
                    self.submit(job, None, None, JobHandle(job.id))
                self.commands.answer(session.key, message)
            case HeldJobs():
                drop = self.recovery.take_over_held(session.key, session.node_name, message.held)
                session.conn.send(Dropped(drop, message.last))
                if message.origin and message.last:
                    self.recovery.handed_over(session.node_name, message.origin)
            case Return():
                self.recovery.on_return(session.key, message)
        self.flow.dispatch()
