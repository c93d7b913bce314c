"""Integrity after the handshake, sans I/O: every frame carries a MAC and a sequence number.

With a secret, the handshake proves that both sides know it; without more, whoever sits on the
path (a fake registry entry relaying to the real distributor) could read, alter or inject any
later frame. So each direction gets its own key, derived from the secret and both handshake
nonces (HKDF over HMAC-SHA256, RFC 5869, standard library only), and every frame body after
the handshake is followed by a 16-byte tag: HMAC(key, sequence number || body). The sequence
number is implicit (both sides count frames), so a frame replayed, dropped or reordered fails
the next check like an altered one. TLS remains the way to get confidentiality.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from jobreactor.errors import MalformedFrame

MAC_BYTES: Final = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 §5; ample for a MAC)
_SEQ: Final = struct.Struct(">Q")
_LENGTH: Final = struct.Struct(">I")
NODE_TO_DISTRIBUTOR: Final = b"node->distributor"
DISTRIBUTOR_TO_NODE: Final = b"distributor->node"


def hkdf_sha256(secret: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF (RFC 5869) with HMAC-SHA256: extract a key from `secret`, expand it for `info`."""
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def session_key(
    secret: bytes, node_name: str, node_nonce: bytes, distributor_nonce: bytes, direction: bytes
) -> bytes:
    """The key for one direction of one session: fresh nonces make it unique to the session."""
    info = b"\x00".join([b"jobreactor-v2 frame mac", direction, node_name.encode()])
    return hkdf_sha256(secret, node_nonce + distributor_nonce, info)


class FrameSealer:
    """Appends the tag to each outgoing frame, in the order the frames go on the wire."""

    __slots__ = ("_base", "_seq")

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._seq = 0

    def seal(self, frame: bytes) -> bytes:
        """`frame` (length header + body) -> the same frame with the tag, length updated."""
        body = memoryview(frame)[_LENGTH.size :]
        mac = self._base.copy()
        mac.update(_SEQ.pack(self._seq))
        mac.update(body)
        self._seq += 1
        return b"".join((_LENGTH.pack(len(body) + MAC_BYTES), body, mac.digest()[:MAC_BYTES]))


class FrameOpener:
    """Checks and strips the tag of each incoming frame body; any mismatch is MalformedFrame."""

    __slots__ = ("_base", "_seq")

    def __init__(self, key: bytes | None) -> None:
        # None: strip the tags unchecked. Only for reading why a distributor whose proof
        # failed refuses us: nothing it says is trusted (we never accept its Welcome).
        self._base = None if key is None else hmac.new(key, digestmod=hashlib.sha256)
        self._seq = 0

    def open(self, body: bytes) -> bytes:
        if len(body) < MAC_BYTES:
            raise MalformedFrame("frame too short for its integrity tag")
        payload = body[:-MAC_BYTES]
        if self._base is not None:
            mac = self._base.copy()
            mac.update(_SEQ.pack(self._seq))
            mac.update(payload)
            if not hmac.compare_digest(mac.digest()[:MAC_BYTES], body[-MAC_BYTES:]):
                raise MalformedFrame(
                    "frame integrity check failed (altered, replayed, dropped or reordered "
                    "on the way, or not from our authenticated peer)"
                )
        self._seq += 1
        return payload
