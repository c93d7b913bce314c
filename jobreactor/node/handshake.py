"""The node's side of the handshake, as functions DistributorLink (link.py) calls: its Hello,
its answer to a Challenge (which also switches the connection to MAC'd frames), and how soon
it dials again after a "busy" refusal."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Final

from jobreactor.errors import LocalProtocolError
from jobreactor.protocol import (
    DISTRIBUTOR_TO_NODE,
    MAX_HELD_IN_HELLO,
    NODE_TO_DISTRIBUTOR,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    FrameOpener,
    FrameSealer,
    Hello,
    encode,
    handshake_proof,
    proof_matches,
    session_key,
)

if TYPE_CHECKING:
    from jobreactor.connection import FramedConnection
    from jobreactor.node.link import DistributorLink

# A distributor that refused us as "busy" (its anonymous slots were full) is dialled again
# after about this long, not after the growing backoff: we are legitimate, just unlucky.
_BUSY_RETRY_S: Final = 0.1


def busy_retry_delay() -> float:
    """About _BUSY_RETRY_S, jittered so refused nodes don't come back in lockstep."""
    return _BUSY_RETRY_S * (0.5 + secrets.randbelow(1000) / 1000)


def hello_frame(link: DistributorLink, nonce: bytes) -> tuple[bytes, list[tuple[str, int]]]:
    """Our Hello, small enough for a distributor that doesn't know us yet, and the held jobs
    that did not fit in it (sent in Held frames once we are welcomed)."""
    node = link.node
    held = node.held_from(link) + link.unacked_report_ids()
    for in_hello in (MAX_HELD_IN_HELLO, 0):
        frame = encode(
            Hello(
                PROTOCOL_VERSION,
                node.name,
                node.registry.names(),
                node.free_credits(link),
                node.storage.kind,
                nonce,
                held[:in_hello],
                node.instance,
                node.secret is not None,
                node.settings.concurrency + node.settings.prefetch,
            )
        )
        if len(frame) <= PRE_AUTH_MAX_FRAME_BYTES:
            return frame, held[in_hello:]
    raise LocalProtocolError(
        f"node {node.name!r}: its Hello needs {len(frame)} bytes, over the "
        f"{PRE_AUTH_MAX_FRAME_BYTES} a distributor accepts before the handshake "
        "(too many or too long job names)"
    )


def answer_challenge(
    conn: FramedConnection, secret: bytes, name: str, nonce: bytes, challenge: Challenge
) -> bool:
    """Send our proof; from then on both directions carry MACs (protocol/mac.py). True if the
    distributor proved the secret too.

    A distributor whose proof doesn't match has another secret: it will refuse our proof too,
    and say so (so both sides log the cause); we answer, and strip the tags of its frames
    unchecked to read why, but never accept its Welcome.
    """
    expected = handshake_proof(secret, "distributor", name, nonce, challenge.nonce)
    matched = proof_matches(expected, challenge.proof)
    conn.send(Auth(handshake_proof(secret, "node", name, nonce, challenge.nonce)))
    keys = [
        session_key(secret, name, nonce, challenge.nonce, direction)
        for direction in (NODE_TO_DISTRIBUTOR, DISTRIBUTOR_TO_NODE)
    ]
    conn.seal_from_now(FrameSealer(keys[0]))
    conn.open_from_now(FrameOpener(keys[1] if matched else None))
    return matched
