"""Distributor: accepts nodes, dispatches jobs by credit, routes feedback back to the app.

The shell around three pure parts: `Dispatcher` (who gets what), `Tracker` (what is out and
under which lease) and the feedback table here. Everything runs on the reactor's loop; the
app's threads reach it only through `Reactor`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable
from typing import Any

from jobreactor.config import ReactorConfig
from jobreactor.connection import FramedConnection
from jobreactor.distributor.commands import NodeCommands
from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.distributor.journal import Journal, assignee
from jobreactor.distributor.outcomes import Feedback, Observer, Outcomes, Waiting
from jobreactor.distributor.session import NodeSession
from jobreactor.distributor.tracking import InFlight, Tracker
from jobreactor.handle import JobHandle
from jobreactor.job import JobRecord
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Cancel,
    CommandResult,
    Dropped,
    Held,
    Message,
    Nack,
    ReportItem,
    Reports,
    Return,
    Welcome,
)
from jobreactor.storage import MemoryStorage, Storage

logger = logging.getLogger("jobreactor.distributor")

_GIVEN_AWAY_LIMIT = 1_000_000


class Distributor(Outcomes):
    def __init__(
        self,
        settings: ReactorConfig,
        *,
        secret: str | None = None,
        advertise: str | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self._unique: dict[str, list[str]] = {}
        self.journal: Journal | None = None
        self.named_feedbacks: dict[str, Feedback] = {}
        self._batch_callbacks: dict[str, Callable[[str], Any]] = {}
        secret = secret if secret is not None else settings.secret
        self.secret = secret.encode() if secret else None
        self.address = advertise or ""
        self._advertise = advertise
        self.loop = asyncio.get_running_loop()
        self.dispatcher = Dispatcher(strict_node=settings.always_use_specified_node)
        self.tracker = Tracker()
        self._waiting: dict[str, Waiting] = {}
        self._sessions: dict[int, NodeSession] = {}
        self._by_name: dict[str, NodeSession] = {}
        self._keys = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Jobs we took from a node and sent elsewhere (or queued again): if that node comes
        # back still holding one, it must drop it. Bounded: the oldest entries go first.
        self._given_away: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._takeovers: dict[str, asyncio.TimerHandle] = {}
        self._node_joined = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self.commands = NodeCommands()
        self.observers: list[Observer] = []
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<Distributor {self.address} nodes={len(self._by_name)} "
            f"pending={len(self.dispatcher)} in_flight={len(self.tracker)}>"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port); return the bound address."""

        def factory() -> FramedConnection:
            return FramedConnection(
                self._new_session,
                max_frame_bytes=self.settings.max_frame_bytes,
                heartbeat_interval=self.settings.heartbeat_interval,
                label="node",
            )

        self._server = await self.loop.create_server(factory, host, port, ssl=ssl_context)
        sockname = self._server.sockets[0].getsockname()
        bound = (str(sockname[0]), int(sockname[1]))
        if not self._advertise:
            self.address = f"{host}:{bound[1]}"
        if self.storage.durable:
            self.journal = Journal(
                self.storage,
                f"distributor:{self.address}",
                self.settings.reconnect_interval,
                self._admitted,
                self._refused,
            )
            await self._restore()
        logger.info("Distributor listens %s:%d (advertised as %s)", *bound, self.address)
        return bound

    async def _restore(self) -> None:
        """Read back the journal of a previous run at this address (redis storage)."""
        assert self.journal is not None
        jobs = await self.journal.load()
        out_on = 0
        for job in jobs:
            # A feedback id equal to the job id was a closure: gone with the old process.
            success = job.on_success if job.on_success not in (None, job.id) else None
            error = job.on_error if job.on_error not in (None, job.id) else None
            self._waiting[job.id] = Waiting(success, error, None)
            node = assignee(job)
            if isinstance(node, str) and job.lease:
                self.tracker.adopt_orphan(job, node, job.lease, self.dispatcher.next_seq())
                out_on += 1
            else:
                self.dispatcher.add(job)
        for name in {entry.node for entry in self.tracker.orphans_of_all()}:
            self._arm_takeover(name)
        if jobs:
            logger.info(
                "distributor %s restored %d job(s) from its journal (%d out on nodes)",
                self.address,
                len(jobs),
                out_on,
            )

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let connected nodes finish what was sent (bounded), then close."""
        if self.closed:
            return
        self.closed = True
        for handle in self._takeovers.values():
            handle.cancel()
        self._takeovers.clear()
        if self._server is not None:
            self._server.close()
        deadline = self.settings.shutdown_timeout if timeout is None else timeout
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
        for session in list(self._sessions.values()):
            session.goodbye("distributor stopping")
        for waiting_id in list(self._waiting):
            self._resolve_cancelled(
                waiting_id, "abandoned: the distributor stopped", forget=not keep
            )
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=deadline)
        if self._server is not None:
            await self._server.wait_closed()
        if self.journal is not None:
            await self.journal.aclose()
        await self.storage.aclose()

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
        address, journal = self.address, self.journal
        for job, success, error, handle in items:
            job.distributor = address
            if success is not None:
                job.on_success = success if isinstance(success, str) else job.id
            if error is not None:
                job.on_error = error if isinstance(error, str) else job.id
            self._waiting[job.id] = Waiting(success, error, handle)
            if journal is not None:
                journal.admit(job, handle)  # dispatched once stored (see _admitted)
                continue
            if handle is not None and handle._durable is None:
                handle._stored()  # memory: held here, best effort
            self.dispatcher.add(job)
        if journal is None:
            self._dispatch()

    def _admitted(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            if job.id in self._waiting:  # not cancelled while it was being stored
                self.dispatcher.add(job)
        self._dispatch()

    def _refused(self, jobs: list[JobRecord]) -> None:
        for job in jobs:
            self._release_unique(job.id)
            waiting = self._waiting.pop(job.id, None)
            if waiting is not None and waiting.handle is not None:
                waiting.handle._cancel("refused: it could not be stored")

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
        entry = self.tracker.get(job_id)
        if entry is None:
            if job_id in self._waiting and self.journal is not None:
                self._resolve_cancelled(job_id)  # still being stored: it won't be dispatched
                return True
            return False
        entry.cancel_requested = True
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
                "in_flight": len(self.tracker.jobs_on(s.key)),
            }
            for s in self._by_name.values()
        ]

    async def command(self, op: str, arg: str, timeout: float) -> list[CommandResult]:
        """Ask every ready node to do `op(arg)` in its storage (protocol.Command)."""
        return await self.commands.ask(list(self._by_name.values()), op, arg, timeout)

    async def wait_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Until a node (named `name`, or any) has joined; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._node_joined:
            await self._node_joined.wait_for(
                lambda: bool(self._by_name) if name is None else name in self._by_name
            )

    # --- node sessions --------------------------------------------------------------------------

    def _new_session(self, conn: FramedConnection) -> NodeSession:
        session = NodeSession(self, conn, next(self._keys))
        self._sessions[session.key] = session
        return session

    def on_node_ready(self, session: NodeSession) -> None:
        hello = session.hello
        assert hello is not None
        drop = self._take_over_held(session, hello.held)
        old = self._by_name.get(hello.node_name)
        if old is not None and old is not session:
            old.conn.close("replaced by a new connection of the same node", notify=True)
        self._by_name[hello.node_name] = session
        takeover = self._takeovers.pop(hello.node_name, None)
        if takeover is not None:
            takeover.cancel()
        held_now = len(self.tracker.jobs_on(session.key))
        self.dispatcher.add_node(session.key, hello.node_name, hello.job_names, hello.credits)
        session.conn.send(Welcome(PROTOCOL_VERSION, self.address, drop))
        logger.info(
            "%s ready to work (%d credits, %d jobs kept)", hello.node_name, hello.credits, held_now
        )
        self._notify_joined()
        self._dispatch()

    def _take_over_held(self, session: NodeSession, held: list[tuple[str, int]]) -> list[str]:
        """Settle the jobs a (re)connecting node says it holds; return the ones it must drop.

        Still ours under that lease: it keeps them. Queued again after it vanished but not sent
        anywhere yet: it gets them back. Given to another node: it drops them. Unknown to us
        (this distributor restarted): it keeps them; their reports will be ignored.
        """
        name = session.node_name
        drop: list[str] = []
        for job_id, lease in held:
            entry = self.tracker.get(job_id)
            if entry is not None:
                if entry.conn == session.key:
                    continue  # already sent again to this very connection: it keeps it
                if entry.node == name and entry.lease == lease:
                    self.tracker.rebind(job_id, session.key)
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
            self.tracker.issue(job, session.key, name, seq, lease=lease)
        return drop

    def _give_away(self, entry: InFlight) -> None:
        self._given_away[entry.job_id] = entry.node
        self._given_away.move_to_end(entry.job_id)
        while len(self._given_away) > _GIVEN_AWAY_LIMIT:
            self._given_away.popitem(last=False)

    def _notify_joined(self) -> None:
        async def notify() -> None:
            async with self._node_joined:
                self._node_joined.notify_all()

        self._spawn(notify())

    def on_session_closed(self, session: NodeSession, was_ready: bool, reason: str) -> None:
        self._sessions.pop(session.key, None)
        if self._by_name.get(session.node_name) is session:
            del self._by_name[session.node_name]
        self.dispatcher.remove_node(session.key)
        self.commands.session_gone(session.key)
        durable = bool(session.hello and session.hello.storage == "redis")
        requeue = self.tracker.detach(session.key, keep_acked=durable)
        if was_ready:
            kept = len(self.tracker.orphans_of(session.node_name)) if durable else 0
            logger.info(
                "%s disconnected (%s); %d job(s) back to the queue, %d kept for it for %.0fs",
                session.node_name,
                reason,
                len(requeue),
                kept,
                self.settings.node_grace,
            )
            if kept and session.node_name not in self._by_name and not self.closed:
                self._arm_takeover(session.node_name)
        for entry in requeue:
            self._give_away(entry)
            self._requeue(entry)
        self._dispatch()
        self._idle.set()

    def _arm_takeover(self, name: str) -> None:
        old = self._takeovers.pop(name, None)
        if old is not None:
            old.cancel()
        self._takeovers[name] = self.loop.call_later(
            self.settings.node_grace, self._take_over, name
        )

    def _take_over(self, name: str) -> None:
        """`name` stayed away past node_grace: its jobs go to other nodes (DESIGN)."""
        self._takeovers.pop(name, None)
        if name in self._by_name:
            return
        orphans = self.tracker.orphans_of(name)
        if not orphans:
            return
        logger.warning(
            "node %s stayed away longer than node_grace=%.0fs: %d job(s) taken over",
            name,
            self.settings.node_grace,
            len(orphans),
        )
        for entry in orphans:
            self.tracker.forget(entry.job_id)
            self._give_away(entry)
            self._requeue(entry)
        self._dispatch()

    def on_node_message(self, session: NodeSession, message: Message) -> None:
        match message:
            case Ack():
                for lease in message.leases:
                    self.tracker.ack(session.key, lease)
                self.dispatcher.grant(session.key, message.credits)
            case Nack():
                entry = self.tracker.by_lease(session.key, message.lease)
                if entry is not None:
                    logger.warning(
                        "%s could not store job %s (%s); requeued",
                        session.node_name,
                        entry.job_id,
                        message.reason,
                    )
                    self.tracker.forget(entry.job_id)
                    self._give_away(entry)
                    self._requeue(entry)
                # No credit comes back with a nack: the node grants it again once it can store.
            case Reports():
                for item in message.items:
                    self._on_report(session, item)
                session.ack_reports(message.first_seq + len(message.items) - 1)
            case CommandResult():
                self._on_command_result(session, message)
            case Held():
                drop = self._take_over_held(session, message.held)
                session.conn.send(Dropped(drop, message.last))
            case Return():
                for job_id in message.job_ids:
                    entry = self.tracker.get(job_id)
                    if entry is not None and entry.conn == session.key:
                        self.tracker.forget(job_id)
                        self._give_away(entry)
                        self._requeue(entry)
                self.dispatcher.set_credits(session.key, 0)
        self._dispatch()

    # --- dispatch and feedback ------------------------------------------------------------------

    def _dispatch(self) -> None:
        for key, job, seq in self.dispatcher.assign():
            session = self._sessions[key]
            record = job.to_dict()  # sent, and kept packed by the tracker (not the JobRecord)
            lease = self.tracker.issue(job, key, session.node_name, seq, wire=record)
            if self.journal is not None:
                self.journal.assigned(job, session.node_name, lease)
            session.queue_job(lease, record)
        if not len(self.dispatcher):
            self._idle.set()

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
        if self.journal is not None:
            self.journal.unassigned(entry.job)
        self.dispatcher.add(entry.job, seq=entry.seq)

    def _on_report(self, session: NodeSession, item: ReportItem) -> None:
        entry = self.tracker.check_report(session.key, item.job_id, item.lease)
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
        self.settle_report(item, entry.name)
        if item.final:
            self._idle.set()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
