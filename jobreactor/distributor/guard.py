"""Who may reach a distributor and join it (README "Security"):
where it may listen without a secret, how many anonymous connections it keeps, and which of two
nodes claiming one name is refused.

The rest of the pre-authentication bounds live where the bytes are: small frames and a short
list of message kinds (`NodeSession` restricts its connection until the handshake succeeds),
per-kind msgpack limits (`protocol.decode_body`), the handshake deadline (`NodeSession`).
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import TYPE_CHECKING

from jobreactor.errors import InsecureBind, RemoteProtocolError
from jobreactor.protocol import Ack, Message, Return
from jobreactor.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from jobreactor.distributor.session import NodeSession


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or "" / "0.0.0.0"): assume it is reachable from outside


def check_bind_is_safe(
    host: str, has_secret: bool, ssl_context: ssl.SSLContext | None, insecure: bool
) -> None:
    """Refuse to listen where strangers can reach us with nothing to keep them out."""
    client_certs = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
    if has_secret or client_certs or insecure or is_loopback(host):
        return
    raise InsecureBind(
        f"refusing to listen on {host!r} without a secret: any peer that can reach this port "
        "could join as a node, take jobs and read their args. Set `secret` (the same on the "
        "nodes), or TLS with client certificates (tls_ca), or `insecure = true` if the network "
        "itself is trusted (start_distributor(..., insecure=True))"
    )


def evicted(warn: RateLimitedLog, peer: str, limit: int) -> None:
    """A newer anonymous connection needed the slot of the one from `peer` (admission.py)."""
    warn(
        "closed the unfinished handshake from %s to admit a newer connection (%d anonymous "
        "slots, max_unauthenticated; a quarter per source address): a flood of connections, "
        "or real nodes, then raise max_unauthenticated",
        peer,
        limit,
    )


def name_clash(live: NodeSession | None, newcomer: NodeSession) -> str | None:
    """Why `newcomer` may not join: `live`, another node process, holds its name.

    The live one is never kicked (it would lose its running jobs to the queue, then come back
    and kick the other: the flapping loop of issue 10); the newcomer is refused.
    """
    hello = newcomer.hello
    assert hello is not None
    if live is None or live is newcomer or live.hello is None or not live.conn.is_open:
        return None
    if live.hello.instance == hello.instance:
        return None  # the same node process reconnecting: it replaces its old connection
    return (
        f"duplicate node name {hello.node_name!r}: another node process with that name is "
        f"connected from {live.conn.peer}; give each node its own name "
        '(e.g. name = "worker-{hostname}")'
    )


def check_bounds(session: NodeSession, message: Message, on_session: int) -> None:
    """A node acknowledges or returns only jobs it was given (`on_session` are out on it);
    one that claims more breaks the protocol and is closed (RemoteProtocolError: Bye, log)."""
    match message:
        case Ack(leases=leases) if len(leases) > on_session:
            what = f"acknowledged {len(leases)} jobs"
        case Return(job_ids=job_ids) if len(job_ids) > on_session:
            what = f"returned {len(job_ids)} jobs"
        case _:
            return
    raise RemoteProtocolError(
        f"node {session.node_name!r} {what} but holds {on_session} from us (a bug or a hostile "
        "peer)"
    )
