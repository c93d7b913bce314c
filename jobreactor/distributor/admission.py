"""Fair pre-authentication admission: who keeps one of the few anonymous handshake slots.

A flood of anonymous sockets (no secret needed) used to hold all `max_unauthenticated` slots,
and every newcomer, the real node included, was refused (issue 18: 8 % of its handshakes
got through). Now a newcomer is always admitted and someone else makes room:
- one source address holds at most a quarter of the slots; past that, its own oldest go;
- otherwise the oldest connection that has not even sent its Hello goes first, then the
  oldest of all.
The one evicted is told "busy" (a `Bye`), so a real node retries at once instead of waiting
out its backoff. A flood thus only ever competes with itself, and a node's handshake (a few
round trips) outlives a churn of hundreds of connections per second.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Anonymous(Protocol):
    """A connection still in its handshake, as admission sees it."""

    @property
    def key(self) -> int: ...

    @property
    def peer(self) -> str: ...

    @property
    def heard_hello(self) -> bool: ...


S = TypeVar("S", bound=Anonymous)


def source_of(peer: str) -> str:
    """The address part of "host:port" (IPv6 hosts contain colons too)."""
    return peer.rpartition(":")[0] or peer


class Admission(Generic[S]):
    """The sessions still in their handshake, oldest first, and who goes when one is needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_source = max(1, limit // 4)
        self._sessions: dict[int, S] = {}  # insertion order: oldest first
        self._by_source: dict[str, dict[int, S]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: object) -> bool:
        return key in self._sessions

    def make_room(self, peer: str) -> S | None:
        """The session to evict before a connection from `peer` is admitted, if any."""
        same_source = self._by_source.get(source_of(peer), {})
        if len(same_source) >= self.per_source:
            return _oldest(same_source)
        if len(self._sessions) >= self.limit:
            return _oldest(self._sessions)
        return None

    def add(self, session: S) -> None:
        self._sessions[session.key] = session
        self._by_source.setdefault(source_of(session.peer), {})[session.key] = session

    def discard(self, key: int) -> None:
        session = self._sessions.pop(key, None)
        if session is None:
            return
        source = source_of(session.peer)
        group = self._by_source.get(source)
        if group is not None:
            group.pop(key, None)
            if not group:
                del self._by_source[source]


def _oldest(sessions: dict[int, S]) -> S | None:
    """The oldest that has sent nothing yet, else the oldest (at most `limit` looked at)."""
    for session in sessions.values():
        if not session.heard_hello:
            return session
    return next(iter(sessions.values()), None)
