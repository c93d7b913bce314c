"""The node side of Distributor: sessions opening and closing, what a (re)connecting node
holds, taking over the jobs of a node that stayed away, and the messages nodes send.
Distributor (distributor.py) mixes this in; the attributes below are Distributor's.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import TYPE_CHECKING

from jobreactor.distributor.admission import Admission
from jobreactor.distributor.commands import NodeCommands
from jobreactor.distributor.guard import check_bounds
from jobreactor.distributor.handover import log_lost
from jobreactor.distributor.recovery import Recovery
from jobreactor.distributor.session import NodeSession
from jobreactor.distributor.tracking import InFlight
from jobreactor.metrics import METRICS, JobMetrics
from jobreactor.protocol import (
    PROTOCOL_VERSION,
    Ack,
    CommandResult,
    HeldJobs,
    Message,
    Nack,
    Reports,
    Return,
    Welcome,
)
from jobreactor.ratelimit import RateLimitedLog

logger = logging.getLogger("jobreactor.distributor")

# Jobs remembered as given away from a node (so it drops them if it comes back holding one).
_GIVEN_AWAY_LIMIT = 1_000_000


class Sessions(Recovery):
    """Node sessions and their messages. The attributes below are Distributor's."""

    if TYPE_CHECKING:
        loop: asyncio.AbstractEventLoop
        closed: bool
        sealed: bool
        commands: NodeCommands
        peer_log: RateLimitedLog
        _by_name: dict[str, NodeSession]
        _keys: itertools.count[int]
        _handshaking: Admission
        _given_away: collections.OrderedDict[str, str]
        _node_joined: asyncio.Condition
        _idle: asyncio.Event
        _metrics: JobMetrics | None

        def _dispatch(self) -> None: ...
        def _on_reports(self, session: NodeSession, message: Reports) -> None: ...
        def _on_command_result(self, session: NodeSession, result: CommandResult) -> None: ...
        def _on_held(self, session: NodeSession, message: HeldJobs) -> None: ...

    def live_session(self, name: str) -> NodeSession | None:
        return self._by_name.get(name)

    def job_unsendable(self, job_id: str, reason: str) -> None:
        """A job that can't be encoded fails alone: forgotten here, its handle resolved."""
        logger.error("job %s can't be sent to a node and is dropped: %s", job_id, reason)
        self.tracker.forget(job_id)
        self._resolve_cancelled(job_id, f"refused: it can't be encoded for the wire ({reason})")

    def on_node_ready(self, session: NodeSession) -> None:
        hello = session.hello
        assert hello is not None
        self._handshaking.discard(session.key)
        if self.sealed:  # handed over while it shook hands: it must meet the adopter
            session.goodbye("distributor stopping")
            return
        drop = self._take_over_held(session, hello.held)
        old = self._by_name.get(hello.node_name)
        if old is not None and old is not session:
            old.conn.close("replaced by a new connection of the same node", notify=True)
        self._by_name[hello.node_name] = session
        takeover = self._takeovers.pop(hello.node_name, None)
        if takeover is not None:
            takeover.cancel()
        if self.tracker.orphan_count(hello.node_name):  # not claimed (yet): node_grace to do so
            self._arm_takeover(hello.node_name)
        held_now = self.tracker.count_on(session.key)
        self.dispatcher.add_node(
            session.key,
            hello.node_name,
            hello.job_names,
            hello.credits,
            max(hello.window, hello.credits, 1),  # its free credit is never counted above this
        )
        METRICS.register(hello.job_names)  # these names get their own metric series
        session.conn.send(Welcome(PROTOCOL_VERSION, self.address, drop, self.iid))
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
        self._handshaking.discard(session.key)
        if self._by_name.get(session.node_name) is session:
            del self._by_name[session.node_name]
        self.dispatcher.remove_node(session.key)
        self.commands.session_gone(session.key)
        durable = bool(session.hello and session.hello.storage == "redis")
        if self.closed:
            self._closed_while_stopping(session, was_ready, reason)
            return
        requeue = self.tracker.detach(session.key, keep_acked=durable)
        if was_ready:
            kept = self.tracker.orphan_count(session.node_name) if durable else 0
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

    def _closed_while_stopping(self, session: NodeSession, was_ready: bool, reason: str) -> None:
        """A session closed after `stop()` began: nothing is requeued or dispatched (the node
        may still run what it holds: sending it elsewhere could run it twice). With a journal
        the jobs stay recorded as out on that node (a restart or an adopter waits for it);
        without one their outcome is lost here, and said so."""
        entries = self.tracker.jobs_on(session.key)
        for entry in entries:
            self.tracker.forget(entry.job_id)
        if was_ready:
            logger.info("%s disconnected (%s); the distributor stops", session.node_name, reason)
        if entries and self.journal is None:
            log_lost(
                [(e.job_id, e.name) for e in entries],
                f"distributor stopping: node {session.node_name} left with jobs whose outcome "
                "is lost here (memory storage; they are not sent to another node)",
            )
            for entry in entries:
                self._resolve_cancelled(entry.job_id, "abandoned: the distributor stopped")
        self._idle.set()

    def _arm_takeover(self, name: str) -> None:
        old = self._takeovers.pop(name, None)
        if old is not None:
            old.cancel()
        self._takeovers[name] = self.loop.call_later(
            self.settings.node_grace, self._take_over, name
        )

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
            "did not claim its jobs" if name in self._by_name else "did not come back",
            self.settings.node_grace,
            len(orphans),
        )
        for entry in orphans:
            if self._metrics is not None:
                self._metrics.taken_over[self._metrics.label(entry.name)] += 1
            self.tracker.forget(entry.job_id)
            self._give_away(entry)
            self._requeue(entry)
        self._dispatch()

    def on_node_message(self, session: NodeSession, message: Message) -> None:
        if self.sealed:
            return  # handed over: unacknowledged, the node sends it to the group's adopter
        check_bounds(session, message, self.tracker.count_on(session.key))
        match message:
            case Ack():
                for lease in message.leases:
                    self.tracker.ack(session.key, lease)
                changed = self.dispatcher.grant(session.key, message.credits)
                session.count_idle_ack(changed or bool(message.leases))
                if not changed:
                    return  # no credit gained: no dispatch round

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
                self._on_reports(session, message)
            case CommandResult():
                self._on_command_result(session, message)
            case HeldJobs():
                self._on_held(session, message)
            case Return():
                self._on_return(session, message)
        self._dispatch()

    def _on_return(self, session: NodeSession, message: Return) -> None:
        """A stopping node hands back jobs it has not started: they go out again."""
        for job_id in message.job_ids:
            entry = self.tracker.get(job_id)
            if entry is not None and entry.conn == session.key:
                self.tracker.forget(job_id)
                self._give_away(entry)
                self._requeue(entry)
        self.dispatcher.set_credits(session.key, 0)
