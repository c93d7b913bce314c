"""Who may reach a distributor and join it (README "Security"):
where it may listen without a secret, how many anonymous connections it keeps, and which of two
nodes claiming one name is refused.

The rest of the pre-authentication bounds live where the bytes are: small frames and a short
list of message kinds (`NodeSession` restricts its connection until the handshake succeeds),
per-kind msgpack limits (`protocol.decode_body`), the handshake deadline and the rules of a
ready session (`session_state.py`).
"""

from __future__ import annotations

import ipaddress
import ssl

from jobreactor.errors import InsecureBind
from jobreactor.protocol import Hello
from jobreactor.ratelimit import RateLimitedLog


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


def name_clash(newcomer: Hello, live: Hello | None, live_peer: str) -> str | None:
    """Why the node saying `newcomer` may not join: another node process, connected (and
    open) from `live_peer` with `live`, holds its name.

    The live one is never kicked (it would lose its running jobs to the queue, then come back
    and kick the other: the flapping loop of issue 10); the newcomer is refused.
    """
    if live is None or live.instance == newcomer.instance:
        return None  # nobody, or the same node process reconnecting: it replaces its old one
    return (
        f"duplicate node name {newcomer.node_name!r}: another node process with that name is "
        f"connected from {live_peer}; give each node its own name "
        '(e.g. name = "worker-{hostname}")'
    )
