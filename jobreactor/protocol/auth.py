"""Handshake proofs: each side shows it knows the shared secret, never the secret itself."""

from __future__ import annotations

import hashlib
import hmac

from jobreactor.errors import ConfigError


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


def secret_bytes(secret: str | None) -> bytes | None:
    """The configured secret as bytes; None for none. `""` is a mistake, not "no secret"."""
    if secret is None:
        return None
    if not secret:
        raise ConfigError(
            'secret = "": an empty secret is not a secret; set one (the same on both sides) '
            "or leave it out to run without one"
        )
    return secret.encode()
