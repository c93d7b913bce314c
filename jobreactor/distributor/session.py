"""NodeSession: the distributor's side of one node connection.

What is legal now is one table: Hello first, then Auth when a secret is set, then
the working messages. Anything else is a protocol violation that closes this connection only.
"""

from __future__ import annotations

import logging
import secrets
from enum import Enum
from typing import TYPE_CHECKING, Final

from jobreactor.connection import FramedConnection
from jobreactor.distributor.guard import name_clash
from jobreactor.errors import HandshakeFailed, LocalProtocolError, RemoteProtocolError
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    MAX_ITEMS_PER_FRAME,
    NODE_TO_DISTRIBUTOR,
    NONCE_BYTES,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    Challenge,
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
    handshake_proof,
    proof_matches,
    session_key,
)

if TYPE_CHECKING:
    from jobreactor.distributor.distributor import Distributor

logger = logging.getLogger("jobreactor.distributor")

# Jobs per Jobs frame: big enough to amortise packing, small enough to stay far below
# max_frame_bytes for ordinary jobs and to let the node start work on the first ones early.
_JOBS_PER_FRAME: Final = 512
# Acknowledgements in a row that change nothing before the node is closed as a flood.
_IDLE_ACKS: Final = 1000


class Phase(Enum):
    AWAIT_HELLO = "await hello"
    AWAIT_AUTH = "await auth"
    READY = "ready"
    CLOSED = "closed"


_ALLOWED: Final[dict[Phase, tuple[type[Message], ...]]] = {
    Phase.AWAIT_HELLO: (Hello, Bye),
    Phase.AWAIT_AUTH: (Auth, Bye),
    Phase.READY: (Ack, Nack, Reports, Return, HeldJobs, CommandResult, Bye),
    Phase.CLOSED: (),
}
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


class NodeSession:
    def __init__(self, distributor: Distributor, conn: FramedConnection, key: int) -> None:
        self.distributor = distributor
        self.conn = conn
        self.key = key
        self.phase = Phase.AWAIT_HELLO
        self.hello: Hello | None = None
        self.heard_hello = False  # anonymous peers that sent nothing are evicted first
        self._idle_acks = 0  # acknowledgements in a row that acknowledged and granted nothing
        self._nonce = b""
        self._outbox: list[tuple[int, Record]] = []
        self._report_ack: int | None = None
        conn.restrict(PRE_AUTH_MAX_FRAME_BYTES, PRE_AUTH_TAGS)
        loop = distributor.loop
        self._deadline = loop.call_later(
            distributor.settings.handshake_timeout, self._handshake_expired
        )

    def __repr__(self) -> str:
        name = self.hello.node_name if self.hello else "?"
        return f"<NodeSession {name} {self.conn.peer} {self.phase.name}>"

    @property
    def node_name(self) -> str:
        return self.hello.node_name if self.hello else "?"

    # --- ConnectionOwner --------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        if not isinstance(message, _ALLOWED[self.phase]):
            raise RemoteProtocolError(
                f"{type(message).__name__} is not allowed in phase {self.phase.value}"
            )
        match message:
            case Hello():
                self._on_hello(message)
            case Auth():
                self._on_auth(message)
            case Bye():
                logger.info("node %s said goodbye: %s", self.node_name, message.reason)
                self.conn.close("peer said goodbye")
            case _:
                self.distributor.on_node_message(self, message)

    def on_close(self, reason: str) -> None:
        self._deadline.cancel()
        was_ready = self.phase is Phase.READY
        self.phase = Phase.CLOSED
        self._outbox.clear()
        self.distributor.on_session_closed(self, was_ready, reason)

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
        limit = self.distributor.settings.max_frame_bytes
        try:
            return encode_split(chunk, Jobs, limit)
        except LocalProtocolError:
            pass
        frames: list[bytes] = []
        for lease, record in chunk:
            try:
                frames += encode_split([(lease, record)], Jobs, limit)
            except LocalProtocolError as exc:
                self.distributor.job_unsendable(record["id"], str(exc))
                self.distributor.dispatcher.grant(self.key, 1)  # never sent: the credit is free
        return frames

    # --- handshake --------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        if self.phase in (Phase.AWAIT_HELLO, Phase.AWAIT_AUTH):
            self.conn.warn(
                "closing connection from %s: no handshake within %.1fs "
                "(not a jobreactor node, or a wrong port)",
                self.conn.peer,
                self.distributor.settings.handshake_timeout,
            )
            self.conn.close("handshake timeout", notify=True)

    def count_idle_ack(self, useful: bool) -> None:
        """A node acknowledges jobs or grants credit it has; a stream of acks that do neither
        is a flood (a real node sends one only when it over-grants, now and then)."""
        self._idle_acks = 0 if useful else self._idle_acks + 1
        if self._idle_acks > _IDLE_ACKS:
            raise RemoteProtocolError(
                f"node {self.node_name!r} sent {_IDLE_ACKS} acknowledgements in a row that "
                "acknowledged nothing and granted no credit (a flood)"
            )

    def evict(self) -> None:
        """Make room for a newer anonymous connection: tell this one to retry soon."""
        self.conn.close("busy: too many handshakes under way here; retry in a moment", notify=True)

    def _on_hello(self, hello: Hello) -> None:
        self.heard_hello = True
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeFailed(
                f"node {hello.node_name!r} speaks protocol {hello.version}, we speak "
                f"{PROTOCOL_VERSION}: upgrade the older side"
            )
        if not hello.node_name or hello.credits < 0 or len(hello.nonce) != NONCE_BYTES:
            raise HandshakeFailed("hello with an empty name, negative credits or a bad nonce")
        self.hello = hello
        secret = self.distributor.secret
        if secret is None:
            if hello.wants_auth:
                self.conn.warn(
                    "refused node %r from %s: it has a secret and this distributor has none; "
                    "set the same secret on both sides",
                    hello.node_name,
                    self.conn.peer,
                )
                self._refuse(
                    "this distributor has no secret but the node has one: "
                    "set the same secret on both sides"
                )
                return
            self._admit()
            return
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        proof = handshake_proof(secret, "distributor", hello.node_name, hello.nonce, self._nonce)
        self.phase = Phase.AWAIT_AUTH
        self.conn.send(Challenge(self._nonce, proof))
        # Everything we send from now on carries a MAC (even a refusal: a node whose proof
        # check failed reads it unchecked, and never trusts it).
        self.conn.seal_from_now(FrameSealer(self._session_key(DISTRIBUTOR_TO_NODE)))

    def _session_key(self, direction: bytes) -> bytes:
        assert self.hello is not None
        assert self.distributor.secret is not None
        return session_key(
            self.distributor.secret, self.hello.node_name, self.hello.nonce, self._nonce, direction
        )

    def _on_auth(self, auth: Auth) -> None:
        assert self.hello is not None
        assert self.distributor.secret is not None
        expected = handshake_proof(
            self.distributor.secret, "node", self.hello.node_name, self.hello.nonce, self._nonce
        )
        if not proof_matches(expected, auth.proof):
            self.conn.warn(
                "refused node %r from %s: bad secret (its proof does not match ours): "
                "check that both sides have the same secret",
                self.hello.node_name,
                self.conn.peer,
            )
            self.conn.close("bad secret: check that both sides have the same secret", notify=True)
            return
        self.conn.open_from_now(FrameOpener(self._session_key(NODE_TO_DISTRIBUTOR)))
        self._admit()

    def _admit(self) -> None:
        assert self.hello is not None
        clash = name_clash(self.distributor.live_session(self.hello.node_name), self)
        if clash is not None:
            logger.error("refused node %r from %s: %s", self.hello.node_name, self.conn.peer, clash)
            self._refuse(clash)
            return
        self._deadline.cancel()
        self.phase = Phase.READY
        self.conn.restrict(self.distributor.settings.max_frame_bytes, NODE_TAGS, NODE_KIND_BYTES)
        self.distributor.on_node_ready(self)

    def _refuse(self, reason: str) -> None:
        """Tell the node why (a Bye) and close; it never becomes ready here."""
        self.conn.close(reason, notify=True)

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
