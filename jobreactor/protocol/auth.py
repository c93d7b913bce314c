"""Handshake proofs: each side shows it knows the shared secret, never the secret itself."""

from __future__ import annotations

import hashlib
import hmac


def handshake_proof(
    secret: bytes, role: str, node_name: str, node_nonce: bytes, distributor_nonce: bytes
) -> bytes:
    """HMAC-SHA256 proving knowledge of `secret`, bound to both nonces, the node and a role."""
    message = b"\x00".join(
        [b"jobreactor-v1", role.encode(), node_name.encode(), node_nonce, distributor_nonce]
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def proof_matches(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received)
