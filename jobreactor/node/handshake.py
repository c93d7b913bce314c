"""The node's side of the handshake and session rules, sans I/O (as h11 does for HTTP).

`NodeHandshake` is a pure state machine: the link (link.py) feeds it each message the
distributor sent and the time now, and does what it returns (`Send`, `Secure`, `Admitted`, …);
it never touches a socket or a clock. The phases: DOWN → (connect) AWAIT_WELCOME → READY →
(closed) DOWN. Before the welcome only a Challenge, the Welcome or a Bye (a refusal) may come;
after it, the session's messages are delivered (`Deliver`) and a Bye is a goodbye (`Leaving`).
A welcome that does not come within `timeout_s` of the connect closes the connection (`poll`).
Anything else is a RemoteProtocolError; a failed check a HandshakeFailed (the connection closes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from jobreactor.errors import HandshakeFailed, LocalProtocolError, RemoteProtocolError
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    MAX_HELD_IN_HELLO,
    NODE_TO_DISTRIBUTOR,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Auth,
    Bye,
    Cancel,
    Challenge,
    Command,
    Dropped,
    FrameOpener,
    FrameSealer,
    Hello,
    Jobs,
    Message,
    Ping,
    Pong,
    ReportsAck,
    Welcome,
    encode,
    handshake_proof,
    proof_matches,
    session_key,
)

# A distributor that refused us as "busy" (its anonymous slots were full) is dialled again
# after about this long, not after the growing backoff: we are legitimate, just unlucky.
_BUSY_RETRY_S: Final = 0.1

# What the distributor may send before it welcomed us (the connection's first restriction).
PRE_WELCOME_TAGS: Final = frozenset({Challenge.TAG, Welcome.TAG, Bye.TAG, Ping.TAG, Pong.TAG})
# What the distributor may send once it welcomed us (Ping/Pong: the connection answers them).
SESSION_MESSAGES: Final = (Jobs, ReportsAck, Cancel, Command, Dropped)


def busy_retry_delay() -> float:
    """About _BUSY_RETRY_S, jittered so refused nodes don't come back in lockstep."""
    return _BUSY_RETRY_S * (0.5 + secrets.randbelow(1000) / 1000)


class Phase(Enum):
    DOWN = "down"
    AWAIT_WELCOME = "await welcome"
    READY = "ready"


# --- what the machine asks the link to do ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: Message


@dataclass(frozen=True, slots=True)
class Secure:
    """From now on frames carry MACs: seal ours with `sealer`, open theirs with `opener`."""

    sealer: FrameSealer
    opener: FrameOpener


@dataclass(frozen=True, slots=True)
class Admitted:
    """Welcomed: the session starts. `was_instance`: the instance before, when it changed."""

    welcome: Welcome
    was_instance: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The distributor said Bye during the handshake; `busy`: dial again soon."""

    reason: str
    busy: bool


@dataclass(frozen=True, slots=True)
class Leaving:
    """The distributor said Bye after the welcome (it stops): close, redial."""

    reason: str


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """A session message, for the link to act on."""

    message: Message


Action = Send | Secure | Admitted | Refused | Leaving | Close | Deliver


def hello_frame(hello: Hello, held: list[tuple[str, int]]) -> tuple[bytes, list[tuple[str, int]]]:
    """`hello` with as many `held` jobs as fit a distributor that doesn't know us yet, and the
    held jobs that did not fit (sent in Held frames once we are welcomed)."""
    for in_hello in (MAX_HELD_IN_HELLO, 0):
        frame = encode(replace(hello, held=held[:in_hello]))
        if len(frame) <= PRE_AUTH_MAX_FRAME_BYTES:
            return frame, held[in_hello:]
    raise LocalProtocolError(
        f"node {hello.node_name!r}: its Hello needs {len(frame)} bytes, over the "
        f"{PRE_AUTH_MAX_FRAME_BYTES} a distributor accepts before the handshake "
        "(too many or too long job names)"
    )


class NodeHandshake:
    """One link's handshake and session phase (one connection at a time)."""

    def __init__(self, node_name: str, secret: bytes | None, timeout_s: float, where: str) -> None:
        self.name = node_name
        self.secret = secret
        self.timeout_s = timeout_s
        self.where = where  # the distributor's configured address, for messages
        self.phase = Phase.DOWN
        self.instance = ""  # the distributor's instance id, from its last Welcome
        self.previous_instance = ""  # the one before, when a Welcome brought a new one
        # For a link found by discovery: the instance the registry lists at this address.
        self.expected_instance: str | None = None
        self.mismatch = False  # the last Welcome came from another instance than expected
        self.welcomed = False  # this connection was welcomed (a refusal keeps the backoff)
        self.busy = False  # the last refusal was "busy": dial again soon
        self.goodbye = False  # the distributor said Bye before this connection closed
        self.deadline: float | None = None  # the welcome is due by then
        self._nonce = b""
        self._challenged = False

    @property
    def is_ready(self) -> bool:
        return self.phase is Phase.READY

    def connect(self, now: float, nonce: bytes) -> None:
        """Connected, our Hello (made with `nonce`) on its way: await the welcome."""
        self.phase = Phase.AWAIT_WELCOME
        self._nonce = nonce
        self._challenged = self.welcomed = self.busy = self.goodbye = self.mismatch = False
        self.deadline = now + self.timeout_s

    def closed(self) -> tuple[bool, bool]:
        """The connection closed: (it was ready, the distributor had said goodbye)."""
        was_ready, goodbye = self.phase is Phase.READY, self.goodbye
        self.phase, self.goodbye, self.deadline = Phase.DOWN, False, None
        return was_ready, goodbye

    def poll(self, now: float) -> list[Action]:
        """Time passed: a welcome overdue closes the connection."""
        if self.phase is Phase.AWAIT_WELCOME and self.deadline is not None and now >= self.deadline:
            self.deadline = None
            return [Close("handshake timeout")]
        return []

    def receive(self, message: Message, now: float) -> list[Action]:
        if self.phase is Phase.READY:
            if isinstance(message, SESSION_MESSAGES):
                return [Deliver(message)]
            if isinstance(message, Bye):
                self.goodbye = True
                return [Leaving(message.reason)]
        elif self.phase is Phase.AWAIT_WELCOME:
            overdue = self.poll(now)
            if overdue:
                return overdue
            if isinstance(message, Challenge):
                return self._on_challenge(message)
            if isinstance(message, Welcome):
                return self._on_welcome(message)
            if isinstance(message, Bye):
                return [self._refused(message.reason)]
        raise RemoteProtocolError(
            f"{type(message).__name__} is not allowed in phase {self.phase.value}"
        )

    def _on_challenge(self, challenge: Challenge) -> list[Action]:
        """Our proof; from then on both directions carry MACs (protocol/mac.py).

        A distributor whose proof doesn't match has another secret: it will refuse our proof
        too, and say so (so both sides log the cause); we answer, and strip the tags of its
        frames unchecked to read why, but never accept its Welcome.
        """
        secret, name, nonce = self.secret, self.name, self._nonce
        if secret is None:
            raise HandshakeFailed(
                f"distributor {self.where} requires a secret; set `secret` on this node"
            )
        expected = handshake_proof(secret, "distributor", name, nonce, challenge.nonce)
        matched = proof_matches(expected, challenge.proof)
        keys = [
            session_key(secret, name, nonce, challenge.nonce, direction)
            for direction in (NODE_TO_DISTRIBUTOR, DISTRIBUTOR_TO_NODE)
        ]
        self._challenged = matched
        return [
            Send(Auth(handshake_proof(secret, "node", name, nonce, challenge.nonce))),
            Secure(FrameSealer(keys[0]), FrameOpener(keys[1] if matched else None)),
        ]

    def _on_welcome(self, welcome: Welcome) -> list[Action]:
        if self.secret is not None and not self._challenged:
            raise HandshakeFailed(
                f"distributor {self.where} admitted us without proving the secret; refusing an "
                "unauthenticated distributor: check that both sides have the same secret"
            )
        self._challenged = False
        if welcome.version != PROTOCOL_VERSION:
            raise HandshakeFailed(
                f"distributor {self.where} speaks protocol {welcome.version}, we speak "
                f"{PROTOCOL_VERSION}: upgrade the older side"
            )
        expected = self.expected_instance
        if expected is not None and welcome.instance != expected:
            self.mismatch = True
            raise HandshakeFailed(
                f"distributor {self.where} is instance {welcome.instance!r} but the registry "
                f"lists {expected!r} there (a recycled port?); not working with it"
            )
        was = ""
        if welcome.instance != self.instance:
            was = self.instance
            self.previous_instance, self.instance = self.instance, welcome.instance
        self.welcomed = True
        self.deadline = None
        self.phase = Phase.READY
        return [Admitted(welcome, was)]

    def _refused(self, reason: str) -> Refused:
        if reason.startswith("busy"):
            self.busy = True
            return Refused(reason, busy=True)
        if reason.startswith("bad secret"):
            reason = "the distributor refused our proof: check that both sides have the same secret"
        return Refused(reason, busy=False)
