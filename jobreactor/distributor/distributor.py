"""Distributor: accepts nodes, dispatches jobs by credit, routes feedback back to the app.

The shell around three pure parts: `Dispatcher` (who gets what), `Tracker` (what is out and
under which lease) and the feedback table here. Everything runs on the reactor's loop; the
app's threads reach it only through `Reactor`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobreactor import otel
from jobreactor.config import ReactorConfig
from jobreactor.connection import FramedConnection
from jobreactor.discovery.keys import new_iid
from jobreactor.distributor.admission import Admission
from jobreactor.distributor.backlog import BacklogWatch
from jobreactor.distributor.binding import listen_sockets, warn_if_unfound
from jobreactor.distributor.commands import NodeCommands
from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.distributor.guard import check_bind_is_safe, evicted
from jobreactor.distributor.handoff import label, send_assigned
from jobreactor.distributor.handover import hand_over
from jobreactor.distributor.journal import Journal
from jobreactor.distributor.outcomes import (
    NOBODY,
    Awaited,
    Feedback,
    Observer,
    awaited,
    waiting_of,
)
from jobreactor.distributor.session import NodeSession
from jobreactor.distributor.sessions import Sessions
from jobreactor.distributor.startup import Startup
from jobreactor.distributor.tracking import InFlight, Tracker
from jobreactor.handle import JobHandle, WeakHandles
from jobreactor.job import JobRecord
from jobreactor.metrics import METRICS
from jobreactor.protocol import (
    Cancel,
    CommandResult,
    Dropped,
    HeldJobs,
    ReportItem,
    Reports,
)
from jobreactor.protocol.auth import secret_bytes
from jobreactor.ratelimit import RateLimitedLog
from jobreactor.storage import MemoryStorage, Storage

if TYPE_CHECKING:
    from jobreactor.distributor.presence import Presence
    from jobreactor.storage.queue_sync import SyncQueueWriter

logger = logging.getLogger("jobreactor.distributor")

MAX_TRACED = 100_000  # traced jobs whose feedback span we can parent (beyond: not parented)


def advertised(advertise: str | None, host: str, port: int) -> str:
    """The address nodes dial: `advertise` ("host:port"; "host" or "host:0" take the bound
    port, as port 0 needs), else the bind host and port."""
    if not advertise:
        return f"{host}:{port}"
    name, colon, given = advertise.rpartition(":")
    if not colon or not given.isdigit() or name.endswith(":"):  # "10.0.0.5", "::1"
        return f"{advertise}:{port}"
    return f"{name}:{port}" if given == "0" else advertise


class Distributor(Sessions):
    def __init__(
        self,
        settings: ReactorConfig,
        *,
        secret: str | None = None,
        advertise: str | None = None,
        storage: Storage | None = None,
        discovery_url: str | None = None,
        group: str | None = None,
    ) -> None:
        self.settings = settings
        self.iid = new_iid()  # this instance; nodes see it in Welcome (a recycled port shows)
        self.started = time.time()
        self.discovery_url = discovery_url if discovery_url is not None else settings.discovery_url
        self.group = group if group is not None else settings.group
        self.presence: Presence | None = None  # with discovery_url: from start()
        self.startup = Startup(self)
        self._unserved: list[socket.socket] = []  # listening, not accepting yet (startup.py)
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self._unique: dict[str, list[str]] = {}
        self.journal: Journal | None = None
        # With redis storage: writes the journal from the enqueuing thread (storage/queue_sync).
        self.sync_writer: SyncQueueWriter | None = None
        self.named_feedbacks: dict[str, Feedback] = {}
        self._batch_callbacks: dict[str, Callable[[str], Any]] = {}
        secret = secret if secret is not None else settings.secret
        self.secret = secret_bytes(secret)
        self.address = advertise or ""
        self._advertise = advertise
        self.loop = asyncio.get_running_loop()
        self.dispatcher = Dispatcher(strict_node=settings.always_use_specified_node)
        self.tracker = Tracker()
        self._waiting: dict[str, Awaited] = {}
        self._weak_handles = WeakHandles(self.loop, self._waiting, NOBODY)
        self._sessions: dict[int, NodeSession] = {}
        self._by_name: dict[str, NodeSession] = {}
        self._keys = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # Jobs we took from a node and sent elsewhere (or queued again): if that node comes
        # back still holding one, it must drop it. Bounded: the oldest entries go first.
        self._given_away: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._takeovers: dict[str, asyncio.TimerHandle] = {}
        # Sessions still in their handshake (anonymous peers), capped by max_unauthenticated.
        self._handshaking = Admission(settings.max_unauthenticated)
        self.peer_log = RateLimitedLog(logger, logging.WARNING, 10.0)
        self._node_joined = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self.commands = NodeCommands()
        self.observers: list[Observer] = []
        self.closed = False
        self.sealed = False  # handing over: dispatch nothing, ignore nodes (handover.py)
        self._metrics = METRICS if settings.metrics else None
        METRICS.track(self)
        self.backlog_watch = BacklogWatch(self)
        self._traces: dict[str, str] = {}  # traced jobs' traceparent until their final report

    def __repr__(self) -> str:
        return (
            f"<Distributor {self.address} nodes={len(self._by_name)} "
            f"pending={len(self.dispatcher)} in_flight={len(self.tracker)}>"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port); return the bound address.

        Raises `InsecureBind` for a non-loopback address with neither a secret nor TLS client
        certificates, unless the `insecure` setting allows it.
        """
        check_bind_is_safe(host, self.secret is not None, ssl_context, self.settings.insecure)

        def factory() -> FramedConnection:
            return FramedConnection(
                self._new_session,
                max_frame_bytes=self.settings.max_frame_bytes,
                heartbeat_interval=self.settings.heartbeat_interval,
                label="node",
                warn=self.peer_log,
            )

        sockets = listen_sockets(host, port)  # OSError (never a half-made server) on failure
        try:
            bound = await self._prepare_then_serve(host, sockets, factory, ssl_context)
        except BaseException:
            for server in self._servers:
                server.close()
            for sock in sockets:
                sock.close()
            if self.presence is not None:
                await self.presence.abandon()  # a failed start leaves Redis as it found it
            raise
        if port == 0 and not self.discovery_url and not self._advertise:
            after = self.settings.warn_no_node_after
            if after > 0:
                warn_if_unfound(
                    self.loop, after, self.address, lambda: bool(self._by_name), lambda: self.closed
                )
        logger.info("Distributor listens %s:%d (advertised as %s)", *bound, self.address)
        return bound

    async def _prepare_then_serve(
        self,
        host: str,
        sockets: list[socket.socket],
        factory: Callable[[], FramedConnection],
        ssl_context: ssl.SSLContext | None,
    ) -> tuple[str, int]:
        """Journal and presence first, accepting nodes last: a node that connects before the
        journal is read back would report jobs we don't know yet, and those reports would be
        lost (issue 16). Until then connections wait in the listen backlog."""
        sockname = sockets[0].getsockname()
        bound = (str(sockname[0]), int(sockname[1]))
        self.address = advertised(self._advertise, host, bound[1])
        if self.storage.durable:
            self.journal = Journal(
                self.storage,
                self.journal_base,
                self.settings.reconnect_interval,
                self._admitted,
                self._refused,
            )
            make_writer = getattr(self.storage, "sync_writer", None)
            if make_writer is not None:
                self.sync_writer = make_writer(self.settings.enqueue_timeout)
        if self.discovery_url:
            from jobreactor.distributor.presence import Presence  # imports redis-py

            self.presence = Presence(self, self.discovery_url, self.group)
        # Join, own and read back the journal, then accept nodes: now, or once Redis is back.
        self._unserved = sockets
        await self.startup.run(functools.partial(self._serve, sockets, factory, ssl_context))
        return bound

    async def _serve(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], FramedConnection],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        for sock in sockets:
            self._servers.append(await self.loop.create_server(factory, sock=sock, ssl=ssl_context))
        self._unserved = []

    async def _stop_startup(self) -> None:
        await self.startup.stop()
        for sock in self._unserved:  # Redis away since start: these never served
            sock.close()
        self._unserved = []

    async def stop(self, timeout: float | None = None, *, handover: bool = False) -> None:
        """Stop accepting, let connected nodes finish what was sent (bounded), then close.

        `handover` (the web recipes' worker exit): a member of a discovery group does not
        wait for its jobs but hands them to its group (handover.py); elsewhere it drains.
        """
        if self.closed:
            return
        self.closed = True
        await self._stop_startup()
        self.backlog_watch.close()
        for handle in self._takeovers.values():
            handle.cancel()
        self._takeovers.clear()
        for server in self._servers:
            server.close()
        deadline = self.settings.shutdown_timeout if timeout is None else timeout
        if handover and self.presence is not None:
            await hand_over(self, deadline)
            await self._close(deadline)
            return
        await self._drain(deadline)
        dropped = self.dispatcher.drain()
        keep = self.journal is not None  # a durable distributor resumes them at restart
        if dropped and keep:
            logger.info(
                "distributor stopping: %d pending job(s) stay in its journal for the next start",
                len(dropped),
            )
        elif dropped:
            logger.warning(
                "distributor stopping: %d pending job(s) dropped (memory storage keeps nothing; "
                "use redis storage on the distributor to keep them)",
                len(dropped),
            )
        for job in dropped:
            self._resolve_cancelled(job.id, "dropped: the distributor stopped", forget=not keep)
        await self._leave_and_close(journal_empty=not dropped and not self._waiting)
        for waiting_id in list(self._waiting):
            self._resolve_cancelled(
                waiting_id, "abandoned: the distributor stopped", forget=not keep
            )
        await self._close(deadline)

    async def _close(self, deadline: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=deadline)
        for server in self._servers:
            await server.wait_closed()
        if self.journal is not None:
            await self.journal.aclose()
        if self.sync_writer is not None:
            self.sync_writer.close()
        await self.storage.aclose()

    async def _leave_and_close(self, *, journal_empty: bool) -> None:
        if self.presence is not None:  # leave first: nodes must not redial us
            await self.presence.stop(journal_empty=journal_empty)
        if self.journal is not None:  # the reports' removals stored: acknowledge them (Bye)
            await self.journal.durable(timeout=2.0)
        for session in list(self._sessions.values()):
            session.goodbye("distributor stopping")

    def started_late(self) -> None:
        """The journal was read back after start (Startup) and nodes are accepted: dispatch."""
        self._dispatch()

    # --- what hand_over (handover.py) uses ----------------------------------------------------

    def waiting_ids(self) -> list[str]:
        """Jobs whose outcome the app still waits for here."""
        return list(self._waiting)

    def has_closure(self, job_id: str) -> bool:
        """True if a feedback of `job_id` is a callable (it can't move to another process)."""
        waiting = self._waiting.get(job_id)
        if waiting is None:
            return False
        kept = waiting_of(waiting)
        return callable(kept.success) or callable(kept.error)

    def resolve_cancelled(self, job_id: str, reason: str, *, keep: bool) -> None:
        """End `job_id` here without a report; `keep`: it stays in the journal (handed over)."""
        self._resolve_cancelled(job_id, reason, forget=not keep)

    def open_sessions(self) -> list[NodeSession]:
        return list(self._sessions.values())

    async def drain_for(self, seconds: float) -> None:
        """At most `seconds`, while nodes are connected: until nothing is pending or out."""
        await self._drain(seconds)

    def unfinished(self) -> int:
        """One-shot jobs accepted and not finished (pending here or out on nodes) + pending."""
        return len(self.dispatcher) + sum(
            1
            for job_id in self._waiting
            if (entry := self.tracker.get(job_id)) is not None and not entry.periodic
        )

    async def wait_idle(self) -> None:
        """Until no job is pending, no one-shot job is out on a node, every feedback has run."""
        while self.unfinished() or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
                continue
            self._idle.clear()
            await self._idle.wait()

    def _busy(self) -> bool:
        return bool(self._by_name) and bool(
            len(self.dispatcher) or self._has_unfinished_one_shots()
        )

    async def _drain(self, deadline: float) -> None:
        """While nodes are connected, wait (bounded) for pending and one-shot jobs to finish."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while self._busy():
                    self._idle.clear()
                    await self._idle.wait()

    def _has_unfinished_one_shots(self) -> bool:
        return any(
            not self.tracker.get(job_id).periodic  # type: ignore[union-attr]
            for job_id in self._waiting
            if self.tracker.get(job_id) is not None
        )

    # --- app side -----------------------------------------------------------------------------

    def submit(
        self,
        job: JobRecord,
        success: Feedback | str | None = None,
        error: Feedback | str | None = None,
        handle: JobHandle | None = None,
    ) -> None:
        """Queue a validated job (on the loop) and send it out if a node has credit."""
        self.submit_many([(job, success, error, handle)])

    def submit_many(
        self,
        items: list[
            tuple[JobRecord, Feedback | str | None, Feedback | str | None, JobHandle | None]
        ],
    ) -> None:
        address, journal, metrics = self.address, self.journal, self._metrics
        weak = self._weak_handles
        for job, success, error, handle in items:
            label(job, address, success, error)
            if metrics is not None:
                name = job.name
                metrics.enqueued[name if name in metrics.known else metrics.label(name)] += 1
            self._waiting[job.id] = awaited(success, error, handle, weak)
            if job.trace is not None and len(self._traces) < MAX_TRACED:
                self._traces[job.id] = job.trace  # its feedback runs in its trace (otel.py)
            if journal is not None and (handle is None or handle._durable is not True):
                journal.admit(job, handle)  # dispatched once stored (see _admitted)
                continue
            if handle is not None and handle._durable is None:
                handle._stored()  # memory: held here, best effort
            self.dispatcher.add(job)
        self._dispatch()

    def withdraw(self, job_ids: list[str]) -> None:
        """Jobs whose enqueue failed or timed out in the app's thread (`sync_writer`): the
        write may still land, so the journal refuses it (they were never queued here)."""
        if self.journal is not None:
            self.journal.withdraw(job_ids)

    def _admitted(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            if job.id in self._waiting:  # not cancelled while it was being stored
                self.dispatcher.add(job)
            elif self.journal is not None:
                self.journal.remove(job.id)  # its removal may have landed before its store
        self._dispatch()

    def _refused(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            self._release_unique(job.id)
            waiting = self._waiting.pop(job.id, None)
            handle = None if waiting is None else waiting_of(waiting).handle
            if handle is not None:
                handle._cancel("refused: it could not be stored")

    def address_port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def pending_count(self) -> int:
        return len(self.dispatcher)

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending, scheduled or periodic job wherever it is. True if it was found."""
        if self.dispatcher.remove(job_id) is not None:
            self._resolve_cancelled(job_id)
            return True
        entry = self.tracker.request_cancel(job_id)
        if entry is None:
            if job_id in self._waiting and self.journal is not None:
                self._resolve_cancelled(job_id)  # still being stored: it won't be dispatched
                return True
            return False
        session = self._sessions.get(entry.conn) if entry.conn is not None else None
        if session is not None:
            session.conn.send(Cancel(job_id))
        return True

    def nodes(self) -> list[dict[str, Any]]:
        slots = {slot.key: slot for slot in self.dispatcher.nodes}
        return [
            {
                "name": s.node_name,
                "address": s.conn.peer,
                "job_names": list(s.hello.job_names) if s.hello else [],
                "free_credit": slots[s.key].credits if s.key in slots else 0,
                "storage": s.hello.storage if s.hello else "?",
                "in_flight": self.tracker.count_on(s.key),
            }
            for s in self._by_name.values()
        ]

    async def command(self, op: str, arg: str, timeout: float) -> list[CommandResult]:
        """Ask every ready node to do `op(arg)` in its storage (protocol.Command)."""
        return await self.commands.ask(list(self._by_name.values()), op, arg, timeout)

    async def command_node(
        self, name: str, op: str, arg: str, timeout: float
    ) -> CommandResult | None:
        """Ask the node named `name` alone (node/control.py ops); None if it isn't connected."""
        session = self._by_name.get(name)
        if session is None:
            return None
        answers = await self.commands.ask([session], op, arg, timeout)
        return answers[0] if answers else None

    async def wait_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Until a node (named `name`, or any) has joined; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._node_joined:
            await self._node_joined.wait_for(
                lambda: bool(self._by_name) if name is None else name in self._by_name
            )

    # --- node sessions (the rest: sessions.py) -------------------------------------------------

    def _new_session(self, conn: FramedConnection) -> NodeSession | None:
        victim = self._handshaking.make_room(conn.peer)
        if victim is not None:  # the newest is admitted; an older anonymous one goes
            evicted(self.peer_log, victim.conn.peer, self.settings.max_unauthenticated)
            self._handshaking.discard(victim.key)
            victim.evict()
        session = NodeSession(self, conn, next(self._keys))
        self._sessions[session.key] = session
        self._handshaking.add(session)
        return session

    # --- dispatch and feedback ------------------------------------------------------------------

    def resume_dispatch(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        if self.startup.pending:
            return  # the journal is not read back yet (Redis away at start)
        if self.sealed:
            return  # handing over: the group dispatches these jobs now
        if self.presence is not None and self.presence.hold_dispatch():
            return  # back from a stall: the next beat round says whether these jobs are ours
        metrics, journal = self._metrics, self.journal
        held_back: list[tuple[NodeSession, int, dict[str, Any]]] = []
        for key, job, seq in self.dispatcher.assign():
            if metrics is not None:
                name = job.name
                metrics.dispatched[name if name in metrics.known else metrics.label(name)] += 1
            session = self._sessions[key]
            # Sent, and kept as it is by the tracker (not the JobRecord). A record that can't
            # be encoded fails alone when its frame is built (session.py), its credit given back.
            record = job.to_dict()
            lease = self.tracker.issue(job, key, session.node_name, seq, wire=record)
            if journal is None:
                session.queue_job(lease, record)
                continue
            journal.assigned(job, session.node_name, lease)
            held_back.append((session, lease, record))
        if held_back:
            # Sent once the assignment is stored: a distributor killed before that restarts
            # with the job unsent (and sends it once), never unsent-but-running (issue 16).
            journal.when_durable(lambda: send_assigned(held_back))  # type: ignore[union-attr]
        if not len(self.dispatcher):
            self._idle.set()
        elif self.backlog_watch.idle:
            self.backlog_watch.arm()  # jobs wait: check for ones no node may run (backlog.py)

    def _on_command_result(self, session: NodeSession, result: CommandResult) -> None:
        if result.job:
            # A failed job the node took out of its storage for JR.retry: enqueued again with
            # the same id and no feedbacks, even if the app stopped waiting for the answer.
            job = JobRecord.from_dict(result.job)
            job.node, job.lease = None, 0
            self.submit(job, None, None, JobHandle(job.id))
        self.commands.answer(session.key, result)

    def _requeue(self, entry: InFlight) -> None:
        if entry.cancel_requested:
            self._resolve_cancelled(entry.job_id)
            return
        job = entry.job  # rebuilt from its packed form, once
        if self.journal is not None:
            self.journal.unassigned(job)
        self.dispatcher.add(job, seq=entry.seq)

    def _on_reports(self, session: NodeSession, message: Reports) -> None:
        for item in message.items:
            self._on_report(session, item)
        upto = message.first_seq + len(message.items) - 1
        if self.journal is None:
            session.ack_reports(upto)
        else:  # acknowledged once the removals they caused are stored (journal.py)
            self.journal.when_durable(lambda: session.ack_reports(upto))

    def _on_held(self, session: NodeSession, message: HeldJobs) -> None:
        drop = self._take_over_held(session, message.held)
        session.conn.send(Dropped(drop, message.last))
        if message.origin and message.last:
            self.handed_over(session.node_name, message.origin)

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
                self.settle_report(item, entry.name)
        else:
            self.settle_report(item, entry.name)
        if item.final:
            self._idle.set()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
