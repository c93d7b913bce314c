"""The distributor's side of one node session as a pure state machine (sans-IO, as h11 does).

No socket, no loop, no clock of its own: messages go in (`receive`, with `now` passed in),
actions come out for the shell (`session.py`) to carry out, and a message that breaks the
rules raises (`HandshakeFailed`, `RemoteProtocolError`; the shell's connection closes with a
Bye naming the reason). What is legal when is one table: Hello first, then Auth when a secret
is set, then the working messages.

The handshake: a Hello with our protocol version, a name and a nonce; with a secret we answer
a Challenge (our nonce and our proof) and seal what we send from then on; the node's Auth must
carry its proof, then what it sends is checked too. A node whose name another live node
process holds is refused (the owner knows who is connected: `Admit` asks it). The session
rules once ready: a node acknowledges or returns only jobs it was given, and a stream of
acknowledgements that acknowledge nothing and grant nothing is a flood.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from jobreactor.errors import HandshakeFailed, RemoteProtocolError
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    NODE_TO_DISTRIBUTOR,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bye,
    Challenge,
    CommandResult,
    HeldJobs,
    Hello,
    Message,
    Nack,
    Reports,
    Return,
    handshake_proof,
    proof_matches,
    session_key,
)

# Acknowledgements in a row that change nothing before the node is closed as a flood.
IDLE_ACKS: Final = 1000

SECRET_MISMATCH: Final = (
    "this distributor has no secret but the node has one: set the same secret on both sides"
)
BAD_SECRET: Final = "bad secret: check that both sides have the same secret"


class Phase(Enum):
    AWAIT_HELLO = "await hello"
    AWAIT_AUTH = "await auth"
    ADMITTING = "admitting"  # the handshake is done: the owner checks the name (`Admit`)
    READY = "ready"
    CLOSED = "closed"


_ALLOWED: Final[dict[Phase, tuple[type[Message], ...]]] = {
    Phase.AWAIT_HELLO: (Hello, Bye),
    Phase.AWAIT_AUTH: (Auth, Bye),
    Phase.ADMITTING: (Bye,),
    Phase.READY: (Ack, Nack, Reports, Return, HeldJobs, CommandResult, Bye),
    Phase.CLOSED: (),
}


# --- what the shell is asked to do ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: Message


@dataclass(frozen=True, slots=True)
class SealOutgoing:
    """Every frame sent from now on carries a MAC under `key`."""

    key: bytes


@dataclass(frozen=True, slots=True)
class OpenIncoming:
    """Every frame received after this one must carry a valid MAC under `key`."""

    key: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection (with a Bye naming `reason` when `notify`). `warning`: what to
    tell the operator (logged, rate-limited, with the peer's address) first."""

    reason: str
    notify: bool
    warning: str = ""


@dataclass(frozen=True, slots=True)
class Admit:
    """The node proved itself: the owner checks its name, then calls `admitted` or `refused`."""

    hello: Hello


Action = Send | SealOutgoing | OpenIncoming | Close | Admit


class SessionState:
    """One node session's handshake and rules; `now` is any monotonic clock (seconds)."""

    def __init__(
        self,
        secret: bytes | None,
        handshake_timeout: float,
        now: float,
        *,
        nonce: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.secret = secret
        self.phase = Phase.AWAIT_HELLO
        self.hello: Hello | None = None
        self.heard_hello = False  # anonymous peers that sent nothing are evicted first
        self.handshake_timeout = handshake_timeout
        self.deadline = now + handshake_timeout  # the handshake must be over by then
        self._nonce_source = nonce
        self._nonce = b""
        self._idle_acks = 0

    @property
    def node_name(self) -> str:
        return self.hello.node_name if self.hello else "?"

    @property
    def in_handshake(self) -> bool:
        return self.phase in (Phase.AWAIT_HELLO, Phase.AWAIT_AUTH, Phase.ADMITTING)

    def receive(self, message: Message) -> list[Action]:
        """What to do about `message` (the working messages of a ready session go to the
        distributor without coming here: see `NodeSession.on_message`)."""
        if not isinstance(message, _ALLOWED[self.phase]):
            raise RemoteProtocolError(
                f"{type(message).__name__} is not allowed in phase {self.phase.value}"
            )
        match message:
            case Hello():
                return self._on_hello(message)
            case Auth():
                return self._on_auth(message)
            case Bye():
                return [Close("peer said goodbye", notify=False)]
        return []

    def expire(self, now: float) -> list[Action]:
        """The handshake deadline passed (the shell's timer): close, once."""
        if not self.in_handshake or now < self.deadline:
            return []
        return [
            Close(
                "handshake timeout",
                notify=True,
                warning=f"no handshake within {self.handshake_timeout:.1f}s "
                "(not a jobreactor node, or a wrong port)",
            )
        ]

    def _on_hello(self, hello: Hello) -> list[Action]:
        self.heard_hello = True
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeFailed(
                f"node {hello.node_name!r} speaks protocol {hello.version}, we speak "
                f"{PROTOCOL_VERSION}: upgrade the older side"
            )
        if not hello.node_name or hello.credits < 0 or len(hello.nonce) != NONCE_BYTES:
            raise HandshakeFailed("hello with an empty name, negative credits or a bad nonce")
        self.hello = hello
        if self.secret is None:
            if hello.wants_auth:
                return [
                    Close(
                        SECRET_MISMATCH,
                        notify=True,
                        warning=f"refused node {hello.node_name!r}: it has a secret and this "
                        "distributor has none; set the same secret on both sides",
                    )
                ]
            self.phase = Phase.ADMITTING
            return [Admit(hello)]
        self._nonce = self._nonce_source(NONCE_BYTES)
        proof = handshake_proof(
            self.secret, "distributor", hello.node_name, hello.nonce, self._nonce
        )
        self.phase = Phase.AWAIT_AUTH
        # Everything we send from now on carries a MAC (even a refusal: a node whose proof
        # check failed reads it unchecked, and never trusts it).
        return [Send(Challenge(self._nonce, proof)), SealOutgoing(self._key(DISTRIBUTOR_TO_NODE))]

    def _on_auth(self, auth: Auth) -> list[Action]:
        hello, secret = self.hello, self.secret
        assert hello is not None  # AWAIT_AUTH comes after a Hello, with a secret
        assert secret is not None
        expected = handshake_proof(secret, "node", hello.node_name, hello.nonce, self._nonce)
        if not proof_matches(expected, auth.proof):
            return [
                Close(
                    BAD_SECRET,
                    notify=True,
                    warning=f"refused node {hello.node_name!r}: bad secret (its proof does not "
                    "match ours): check that both sides have the same secret",
                )
            ]
        self.phase = Phase.ADMITTING
        return [OpenIncoming(self._key(NODE_TO_DISTRIBUTOR)), Admit(hello)]

    def _key(self, direction: bytes) -> bytes:
        assert self.hello is not None
        assert self.secret is not None
        return session_key(
            self.secret, self.hello.node_name, self.hello.nonce, self._nonce, direction
        )

    def admitted(self) -> None:
        """The owner let the node join (no other live node process holds its name)."""
        if self.phase is not Phase.ADMITTING:
            raise RemoteProtocolError(f"admitted in phase {self.phase.value}")
        self.phase = Phase.READY

    def refused(self, reason: str) -> list[Action]:
        """The owner refused the node (`reason`: why, for the node and the log)."""
        return [Close(reason, notify=True)]

    def closed(self) -> bool:
        """The connection is gone; True if the session had been ready."""
        was_ready = self.phase is Phase.READY
        self.phase = Phase.CLOSED
        return was_ready

    # --- the rules of a ready session ---------------------------------------------------------

    def check_bounds(self, message: Message, on_session: int) -> None:
        """A node acknowledges or returns only jobs it was given (`on_session` are out on it);
        one that claims more breaks the protocol (a bug or a hostile peer)."""
        match message:
            case Ack(leases=leases) if len(leases) > on_session:
                what = f"acknowledged {len(leases)} jobs"
            case Return(job_ids=job_ids) if len(job_ids) > on_session:
                what = f"returned {len(job_ids)} jobs"
            case _:
                return
        raise RemoteProtocolError(
            f"node {self.node_name!r} {what} but holds {on_session} from us (a bug or a hostile "
            "peer)"
        )

    def count_ack(self, useful: bool) -> None:
        """A node acknowledges jobs or grants credit it has; a stream of acks that do neither
        is a flood (a real node sends one only when it over-grants, now and then)."""
        self._idle_acks = 0 if useful else self._idle_acks + 1
        if self._idle_acks > IDLE_ACKS:
            raise RemoteProtocolError(
                f"node {self.node_name!r} sent {IDLE_ACKS} acknowledgements in a row that "
                "acknowledged nothing and granted no credit (a flood)"
            )
