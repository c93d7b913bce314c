"""Registry entries that can't be forged (issue 18).

Whoever can write to the registry's Redis could list a fake distributor (ZADD a member with a
10-year deadline, HSET its address, PUBLISH join) and nodes dialled it. So:
- with a secret, every entry carries `expires` (Redis clock, ms) and `sig`, an HMAC-SHA256 of
  the group, kind, instance, address and `expires` under a key derived from the secret (HKDF,
  its own label: not the handshake's key); a node ignores an entry that does not verify, and
  one whose signed expiry has passed;
- with or without one, an entry whose deadline lies further ahead than any real TTL is
  ignored (a real member renews a short deadline every beat).
Without a secret the registry's Redis stays a trust anchor: the README says so.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from jobreactor.protocol.mac import hkdf_sha256

# No real member sets a deadline further ahead than this (registry_ttl is seconds).
MAX_AHEAD_MS: Final = 10 * 60 * 1000


def registry_key(secret: bytes, group: str) -> bytes:
    return hkdf_sha256(secret, b"jobreactor registry", b"registry entries\x00" + group.encode())


def entry_signature(
    key: bytes, group: str, kind: str, iid: str, address: str, expires_ms: int
) -> str:
    message = "\x00".join(["jobreactor-registry-v1", group, kind, iid, address, str(expires_ms)])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def entry_is_trusted(
    key: bytes | None,
    group: str,
    kind: str,
    iid: str,
    fields: dict[str, str],
    now_ms: int,
) -> str | None:
    """None if the entry may be used; else why not (for one log line)."""
    try:
        deadline = int(fields.get("deadline", "0"))
        expires = int(fields.get("expires", "0"))
    except ValueError:
        return "malformed deadline"
    if deadline > now_ms + MAX_AHEAD_MS:
        return f"its deadline is {(deadline - now_ms) / 1000:.0f}s ahead (no real member's is)"
    if key is None:
        return None
    expected = entry_signature(key, group, kind, iid, fields.get("address", ""), expires)
    if not hmac.compare_digest(expected, fields.get("sig", "")):
        return "not signed with our secret (forged, or another secret)"
    if not now_ms < expires <= now_ms + MAX_AHEAD_MS:
        return "its signed expiry has passed (or lies too far ahead)"
    return None
