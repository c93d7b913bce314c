"""NodeSession: the asyncio shell around one node connection's `SessionState`.

It carries out what the state machine asks (send, seal, close), runs its handshake timer, and
batches what goes out: jobs in frames of `_JOBS_PER_FRAME`, one report acknowledgement per
flush. The rules are `session_state.py`'s; what the node's messages mean is the owner's
(`SessionOwner`, the distributor's node registry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from jobreactor.connection import FramedConnection
from jobreactor.distributor.session_state import (
    Action,
    Admit,
    Close,
    OpenIncoming,
    Phase,
    SealOutgoing,
    Send,
    SessionState,
)
from jobreactor.errors import LocalProtocolError
from jobreactor.protocol import (
    MAX_ITEMS_PER_FRAME,
    PRE_AUTH_MAX_FRAME_BYTES,
    Ack,
    Auth,
    Bye,
    Command,
    CommandResult,
    FrameOpener,
    FrameSealer,
    HeldJobs,
    Hello,
    Jobs,
    Message,
    Nack,
    Ping,
    Pong,
    Record,
    Reports,
    ReportsAck,
    Return,
    encode,
    encode_split,
)

logger = logging.getLogger("jobreactor.distributor")

# Jobs per Jobs frame: big enough to amortise packing, small enough to stay far below
# max_frame_bytes for ordinary jobs and to let the node start work on the first ones early.
_JOBS_PER_FRAME: Final = 512

# What an anonymous peer may send at all; anything else is refused before it is unpacked.
PRE_AUTH_TAGS: Final = frozenset({Hello.TAG, Auth.TAG, Bye.TAG, Ping.TAG, Pong.TAG})
# What a node may send once admitted (never Jobs: refused by its tag, before it is buffered).
NODE_TAGS: Final = frozenset(
    {Ack.TAG, Nack.TAG, Reports.TAG, Return.TAG, HeldJobs.TAG, CommandResult.TAG, Bye.TAG}
    | {Ping.TAG, Pong.TAG}
)
# Size bounds per kind, on top of max_frame_bytes (which only Reports and CommandResult, the
# kinds carrying job args, may use): each fits MAX_ITEMS_PER_FRAME items of its kind.
_ITEM_FRAME: Final = 64 * MAX_ITEMS_PER_FRAME + 1024
NODE_KIND_BYTES: Final = {
    Ack.TAG: 10 * MAX_ITEMS_PER_FRAME + 64,
    Nack.TAG: 8192,
    Return.TAG: _ITEM_FRAME,
    HeldJobs.TAG: _ITEM_FRAME,
    Bye.TAG: 8192,
    Ping.TAG: 16,
    Pong.TAG: 16,
}


class SessionOwner(Protocol):
    """What a session tells the distributor (its node registry implements this); the
    working messages of a ready session go to `deliver`, given at construction."""

    def name_clash(self, session: NodeSession) -> str | None: ...

    def on_node_ready(self, session: NodeSession) -> None: ...

    def on_session_closed(self, session: NodeSession, was_ready: bool, reason: str) -> None: ...

    def job_unsendable(self, job_id: str, reason: str, key: int) -> None: ...


class NodeSession:
    def __init__(
        self,
        owner: SessionOwner,
        conn: FramedConnection,
        key: int,
        *,
        deliver: Callable[[NodeSession, Message], None],
        secret: bytes | None,
        handshake_timeout: float,
        max_frame_bytes: int,
    ) -> None:
        self.conn = conn
        self.key = key
        self._owner = owner
        self._deliver = deliver  # every working message of the ready session
        self._max_frame_bytes = max_frame_bytes
        self._outbox: list[tuple[int, Record]] = []
        self._report_ack: int | None = None
        self._ready = False
        loop = asyncio.get_running_loop()
        self.state = SessionState(secret, handshake_timeout, loop.time())
        conn.restrict(PRE_AUTH_MAX_FRAME_BYTES, PRE_AUTH_TAGS)
        self._deadline = loop.call_at(self.state.deadline, self._handshake_expired)

    def __repr__(self) -> str:
        return f"<NodeSession {self.node_name} {self.conn.peer} {self.state.phase.name}>"

    @property
    def hello(self) -> Hello | None:
        return self.state.hello

    @property
    def node_name(self) -> str:
        hello = self.state.hello
        return hello.node_name if hello else "?"

    @property
    def peer(self) -> str:
        return self.conn.peer

    @property
    def heard_hello(self) -> bool:
        return self.state.heard_hello

    # --- ConnectionOwner --------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        if self._ready and type(message) is not Bye:
            # Ready: the connection passes only NODE_TAGS now (restricted at admission), and
            # every one but Bye is the distributor's (the hot path: no action list built).
            self._deliver(self, message)
            return
        if type(message) is Bye:
            logger.info("node %s said goodbye: %s", self.node_name, message.reason)
        self._apply(self.state.receive(message))

    def on_close(self, reason: str) -> None:
        self._deadline.cancel()
        self._ready = False
        was_ready = self.state.closed()
        self._outbox.clear()
        self._owner.on_session_closed(self, was_ready, reason)

    def before_flush(self) -> None:
        if self._report_ack is not None:
            self.conn.send_frame(encode(ReportsAck(self._report_ack)))
            self._report_ack = None
        outbox = self._outbox
        while outbox:
            chunk = outbox[:_JOBS_PER_FRAME]
            del outbox[:_JOBS_PER_FRAME]
            for frame in self._encode_jobs(chunk):
                self.conn.send_frame(frame)

    def _encode_jobs(self, chunk: list[tuple[int, Record]]) -> list[bytes]:
        """Frames for `chunk`. Enqueue bounds each job's size, so a frame too big is only ever
        split; enqueue also range-checks every value, but a job that still can't be encoded
        fails alone (its handle resolves), never the jobs next to it."""
        limit = self._max_frame_bytes
        try:
            return encode_split(chunk, Jobs, limit)
        except LocalProtocolError:
            pass
        frames: list[bytes] = []
        for lease, record in chunk:
            try:
                frames += encode_split([(lease, record)], Jobs, limit)
            except LocalProtocolError as exc:
                self._owner.job_unsendable(record["id"], str(exc), self.key)
        return frames

    # --- carrying out the state machine's actions -------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send():
                    self.conn.send(action.message)
                case SealOutgoing():
                    self.conn.seal_from_now(FrameSealer(action.key))
                case OpenIncoming():
                    self.conn.open_from_now(FrameOpener(action.key))
                case Admit():
                    self._admit()
                case Close():
                    if action.warning:  # in the format string: log filters match it
                        escaped = action.warning.replace("%", "%%")
                        self.conn.warn(f"closing connection from %s: {escaped}", self.conn.peer)
                    self.conn.close(action.reason, notify=action.notify)

    def _admit(self) -> None:
        clash = self._owner.name_clash(self)
        if clash is not None:
            logger.error("refused node %r from %s: %s", self.node_name, self.conn.peer, clash)
            self._apply(self.state.refused(clash))
            return
        self._deadline.cancel()
        self.state.admitted()
        self._ready = True
        self.conn.restrict(self._max_frame_bytes, NODE_TAGS, NODE_KIND_BYTES)
        self._owner.on_node_ready(self)

    def _handshake_expired(self) -> None:
        self._apply(self.state.expire(asyncio.get_running_loop().time()))

    @property
    def is_ready(self) -> bool:
        return self.state.phase is Phase.READY

    def evict(self) -> None:
        """Make room for a newer anonymous connection: tell this one to retry soon."""
        self.conn.close("busy: too many handshakes under way here; retry in a moment", notify=True)

    # --- sending ----------------------------------------------------------------------------

    def queue_job(self, lease: int, record: Record) -> None:
        self._outbox.append((lease, record))
        self.conn.schedule_flush()

    def goodbye(self, reason: str) -> None:
        """Close with a Bye, acknowledging the reports received so far first.

        The last reports often arrive in the very loop turn the distributor stops in, before
        the batched acknowledgement leaves; unacknowledged, the node would keep them, warn, and
        send them again. Jobs not yet sent stay unsent: the app was told they were dropped.
        """
        if self._report_ack is not None:
            self.conn.send_frame(encode(ReportsAck(self._report_ack)))
            self._report_ack = None
        self.conn.close(reason, notify=True)

    def send_command(self, command: Command) -> None:
        self.conn.send(command)

    def ack_reports(self, upto_seq: int) -> None:
        if self._report_ack is None or upto_seq > self._report_ack:
            self._report_ack = upto_seq
        self.conn.schedule_flush()
