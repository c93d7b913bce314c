"""NodeRegistry: the node sessions of a distributor, by connection and by node name.

A connection gets a `NodeSession` at once (`new_session`), in one of the few anonymous
handshake slots (`Admission`: the newest is admitted, someone else makes room). A session that
completes its handshake is checked against the live node of its name (`name_clash`), then
joins (`join`): by name from then on, replacing an older connection of the same node process.
What a session's coming and going means for the jobs is the coordinator's (`on_ready`,
`on_gone` callbacks) and `Recovery`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from jobreactor.config import ReactorConfig
from jobreactor.connection import FramedConnection
from jobreactor.distributor.admission import Admission
from jobreactor.distributor.dispatch import NodeSlot
from jobreactor.distributor.guard import evicted, name_clash
from jobreactor.distributor.session import NodeSession
from jobreactor.errors import ReactorTimeout
from jobreactor.protocol import Message
from jobreactor.ratelimit import RateLimitedLog

logger = logging.getLogger("jobreactor.distributor")


class NodeRegistry:
    """Implements `SessionOwner` for its sessions; `deliver` gets their working messages."""

    def __init__(
        self,
        settings: ReactorConfig,
        secret: bytes | None,
        *,
        peer_log: RateLimitedLog,
        deliver: Callable[[NodeSession, Message], None],
        on_ready: Callable[[NodeSession], None],
        on_gone: Callable[[NodeSession, bool, str], None],
        unsendable: Callable[[str, str, int], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.peer_log = peer_log
        self.sessions: dict[int, NodeSession] = {}  # every open connection, by key
        self.by_name: dict[str, NodeSession] = {}  # the ready ones, by node name
        self._handshaking: Admission[NodeSession] = Admission(settings.max_unauthenticated)
        self._keys = itertools.count(1)
        self._joined = asyncio.Condition()
        self._deliver = deliver
        self._on_ready = on_ready
        self._on_gone = on_gone
        self._unsendable = unsendable
        self._spawn = spawn
        self.refusing = False  # the distributor stops: a new connection is closed at once

    def __len__(self) -> int:
        """Nodes ready to work."""
        return len(self.by_name)

    def connection(self) -> FramedConnection:
        """A new node connection (the listener's protocol factory); its session comes at once."""
        settings = self.settings
        return FramedConnection(
            self.new_session,
            max_frame_bytes=settings.max_frame_bytes,
            heartbeat_interval=settings.heartbeat_interval,
            label="node",
            warn=self.peer_log,
        )

    def new_session(self, conn: FramedConnection) -> NodeSession | None:
        if self.refusing:  # accepted in the instant the listener closed: dropped at once
            return None
        victim = self._handshaking.make_room(conn.peer)
        if victim is not None:  # the newest is admitted; an older anonymous one goes
            evicted(self.peer_log, victim.peer, self.settings.max_unauthenticated)
            self._handshaking.discard(victim.key)
            victim.evict()
        session = NodeSession(
            self,
            conn,
            next(self._keys),
            deliver=self._deliver,
            secret=self.secret,
            handshake_timeout=self.settings.handshake_timeout,
            max_frame_bytes=self.settings.max_frame_bytes,
        )
        self.sessions[session.key] = session
        self._handshaking.add(session)
        return session

    # --- SessionOwner -------------------------------------------------------------------------

    def name_clash(self, session: NodeSession) -> str | None:
        hello = session.hello
        assert hello is not None
        live = self.by_name.get(hello.node_name)
        if live is None or live is session or live.hello is None or not live.conn.is_open:
            return None
        return name_clash(hello, live.hello, live.peer)

    def on_node_ready(self, session: NodeSession) -> None:
        self._handshaking.discard(session.key)
        self._on_ready(session)

    def on_session_closed(self, session: NodeSession, was_ready: bool, reason: str) -> None:
        self.sessions.pop(session.key, None)
        self._handshaking.discard(session.key)
        if self.by_name.get(session.node_name) is session:
            del self.by_name[session.node_name]
        self._on_gone(session, was_ready, reason)

    def job_unsendable(self, job_id: str, reason: str, key: int) -> None:
        self._unsendable(job_id, reason, key)

    # --- ready nodes --------------------------------------------------------------------------

    def join(self, session: NodeSession) -> None:
        """`session` is its node's connection from now on (an older one of it is closed)."""
        name = session.node_name
        old = self.by_name.get(name)
        if old is not None and old is not session:
            old.conn.close("replaced by a new connection of the same node", notify=True)
        self.by_name[name] = session

        async def notify() -> None:
            async with self._joined:
                self._joined.notify_all()

        self._spawn(notify())

    def describe(
        self, slots: list[NodeSlot], count_on: Callable[[int], int]
    ) -> list[dict[str, Any]]:
        """The ready nodes as the app lists them (`slots`: the dispatcher's, for the free
        credit; `count_on`: jobs out on a session)."""
        credits = {slot.key: slot.credits for slot in slots}
        return [
            {
                "name": s.node_name,
                "address": s.conn.peer,
                "job_names": list(s.hello.job_names) if s.hello else [],
                "free_credit": credits.get(s.key, 0),
                "storage": s.hello.storage if s.hello else "?",
                "in_flight": count_on(s.key),
            }
            for s in self.by_name.values()
        ]

    def ready(self) -> list[NodeSession]:
        return list(self.by_name.values())

    def open(self) -> list[NodeSession]:
        return list(self.sessions.values())

    async def wait_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Until a node (named `name`, or any) has joined; ReactorTimeout after `timeout`."""
        try:
            async with asyncio.timeout(timeout), self._joined:
                await self._joined.wait_for(
                    lambda: bool(self.by_name) if name is None else name in self.by_name
                )
        except TimeoutError:
            raise ReactorTimeout(
                f"no node {'' if name is None else repr(name) + ' '}joined within {timeout:g}s"
            ) from None

    def close_all(self, reason: str) -> None:
        for session in self.open():
            session.conn.close(reason, notify=True)

    def goodbye_all(self, reason: str) -> None:
        for session in self.open():
            session.goodbye(reason)
