"""Where a batch lives (batch.py): the backend seam, a memory store for one process, and Redis
with the gem distributed_job's layout and two Lua scripts (`push`, `done`), so Ruby and Python
workers can share a batch. Batch (batch.py) talks to one backend; nothing else does.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal, Protocol

from jobreactor.storage.connect import LazySync, is_cluster, redis_errors
from jobreactor.storage.keys import batch_keys

_PUSH_CHUNK: Final = 1_000  # parts per script call (one round trip) in `push_all`

KeyName = Literal["parts", "state"]


# --- the backend seam ---------------------------------------------------------------------------


class Backend(Protocol):
    """What a batch needs from its storage. Each method is one atomic step."""

    kind: str

    def push(self, parts: Iterable[str]) -> None:
        """Add each part (duplicates count once in count and total); refresh both TTLs."""
        ...

    def close(self) -> None:
        """Mark the batch closed; refresh both TTLs."""
        ...

    def stop(self) -> None:
        """Mark the batch stopped; refresh both TTLs."""
        ...

    def done(self, part: str) -> bool:
        """Remove `part`; True iff it was open, none remain and the batch is closed."""
        ...

    def count(self) -> int: ...

    def total(self) -> int: ...

    def flags(self) -> tuple[bool, bool]:
        """(closed, stopped)."""
        ...

    def finished(self) -> bool: ...

    def open_parts(self) -> Iterator[str]: ...

    def is_open(self, part: str) -> bool: ...

    def remaining_ttl(self, which: KeyName) -> float | None: ...


# --- memory ---------------------------------------------------------------------------------------


class MemoryStore:
    """An in-process stand-in for the two Redis keys of every batch, with the same semantics.

    Thread-safe: every operation runs under one lock, which is what makes `done` atomic. Keys
    expire by `clock` (monotonic seconds): as in Redis, a set that loses its last member is
    deleted, and refreshing the expiry of a key that doesn't exist does nothing. Expired keys
    are dropped when touched, and all of them every few thousand writes, so a long-lived
    process doesn't keep dead batches.

    `open_batch` uses one module-level instance; pass your own (e.g. with a fake clock) to
    `Batch` to isolate a test.
    """

    _SWEEP_EVERY: Final = 4_096

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sets: dict[str, set[str]] = {}
        self._hashes: dict[str, dict[str, str]] = {}
        self._deadlines: dict[str, float] = {}
        self._writes = 0

    def __enter__(self) -> MemoryStore:
        self._lock.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()

    # The methods below are Redis commands; call them only inside `with store:`.

    def _live(self, key: str) -> bool:
        deadline = self._deadlines.get(key)
        if deadline is not None and deadline <= self._clock():
            self._delete(key)
            return False
        return key in self._sets or key in self._hashes

    def _delete(self, key: str) -> None:
        self._sets.pop(key, None)
        self._hashes.pop(key, None)
        self._deadlines.pop(key, None)

    def members(self, key: str) -> set[str]:
        """The set at `key` (live view; empty and detached if the key doesn't exist)."""
        return self._sets[key] if self._live(key) and key in self._sets else set()

    def hash(self, key: str) -> dict[str, str]:
        """The hash at `key` (live view; empty and detached if the key doesn't exist)."""
        return self._hashes[key] if self._live(key) and key in self._hashes else {}

    def sadd(self, key: str, member: str) -> bool:
        members = self.members(key)
        if not members:
            self._sets[key] = members
        if member in members:
            return False
        members.add(member)
        return True

    def srem(self, key: str, member: str) -> bool:
        members = self.members(key)
        if member not in members:
            return False
        members.discard(member)
        if not members:
            self._delete(key)
        return True

    def hset(self, key: str, field: str, value: str) -> None:
        fields = self.hash(key)
        if not fields:
            self._hashes[key] = fields
        fields[field] = value

    def expire(self, key: str, ttl: int) -> None:
        if self._live(key):
            self._deadlines[key] = self._clock() + ttl
        self._writes += 1
        if self._writes % self._SWEEP_EVERY == 0:
            self._sweep()

    def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires; None if it doesn't exist, inf if it never expires."""
        if not self._live(key):
            return None
        deadline = self._deadlines.get(key)
        return math.inf if deadline is None else deadline - self._clock()

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, deadline in self._deadlines.items() if deadline <= now]:
            self._delete(key)


SHARED_STORE: Final = MemoryStore()


class _Flags:
    """close/stop are the same write for both backends: set one flag, refresh both TTLs."""

    def _set_flag(self, field: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._set_flag("closed")

    def stop(self) -> None:
        self._set_flag("stopped")


class MemoryBackend(_Flags):
    kind = "memory"

    def __init__(self, store: MemoryStore, key: str, ttl: int) -> None:
        self._store = store
        self._parts = f"{key}:parts"
        self._state = f"{key}:state"
        self._ttl = ttl

    def _refresh(self) -> None:
        self._store.expire(self._parts, self._ttl)
        self._store.expire(self._state, self._ttl)

    def push(self, parts: Iterable[str]) -> None:
        for part in parts:
            with self._store as s:
                if s.sadd(self._parts, part):
                    state = s.hash(self._state)
                    s.hset(self._state, "total", str(int(state.get("total", "0")) + 1))
                self._refresh()

    def _set_flag(self, field: str) -> None:
        with self._store as s:
            s.hset(self._state, field, "1")
            self._refresh()

    def done(self, part: str) -> bool:
        with self._store as s:
            if not s.srem(self._parts, part):
                return False
            self._refresh()
            return not s.members(self._parts) and s.hash(self._state).get("closed") == "1"

    def count(self) -> int:
        with self._store as s:
            return len(s.members(self._parts))

    def total(self) -> int:
        with self._store as s:
            return int(s.hash(self._state).get("total", "0"))

    def flags(self) -> tuple[bool, bool]:
        with self._store as s:
            state = s.hash(self._state)
            return state.get("closed") == "1", state.get("stopped") == "1"

    def finished(self) -> bool:
        with self._store as s:
            closed = s.hash(self._state).get("closed") == "1"
            return closed and not s.members(self._parts)

    def open_parts(self) -> Iterator[str]:
        with self._store as s:
            snapshot = list(s.members(self._parts))
        return iter(snapshot)

    def is_open(self, part: str) -> bool:
        with self._store as s:
            return part in s.members(self._parts)

    def remaining_ttl(self, which: KeyName) -> float | None:
        with self._store as s:
            return s.ttl(self._parts if which == "parts" else self._state)


# --- redis ----------------------------------------------------------------------------------------

# The gem's two scripts, with the keys passed as KEYS (the gem passes a prefix in ARGV). `done`
# also reads `closed` inside the script: the gem reads it with a separate HGET afterwards, which
# lets two callers both see True if a part is pushed and the batch closed in between.
_PUSH_LUA: Final = """
-- ARGV[1] the ttl, ARGV[2..] parts: the gem's push, for many parts in one call.
for i = 2, #ARGV do
  if redis.call('sadd', KEYS[1], ARGV[i]) == 1 then
    redis.call('hincrby', KEYS[2], 'total', 1)
  end
end
redis.call('expire', KEYS[1], ARGV[1])
redis.call('expire', KEYS[2], ARGV[1])
return 1
"""

_DONE_LUA: Final = """
if redis.call('srem', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('expire', KEYS[1], ARGV[2])
redis.call('expire', KEYS[2], ARGV[2])
if redis.call('scard', KEYS[1]) == 0 and redis.call('hget', KEYS[2], 'closed') == '1' then
  return 1
end
return 0
"""


def _text(value: Any) -> str | None:
    """A reply as str, whether or not the client decodes responses."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


class RedisBackend(_Flags):
    kind = "redis"

    def __init__(self, client: Any, namespace: str | None, token: str, ttl: int) -> None:
        """`client`: a `redis.Redis`, a `redis.cluster.RedisCluster`, or a `LazySync`."""
        self._conn = client if isinstance(client, LazySync) else None
        self._client: Any = None if isinstance(client, LazySync) else client
        self._batch = (namespace, token)
        self._key = batch_keys(namespace, token, cluster=False)[0]
        self._ttl = ttl
        if self._conn is not None:
            where = self._conn.where
        else:
            kwargs = getattr(client, "connection_pool", None)
            kwargs = kwargs.connection_kwargs if kwargs is not None else {}
            where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        # The storage layer's one translation of redis-py errors, reused per call.
        self._errors = functools.partial(redis_errors, f"batch {self._key}", where)
        self._ready = False

    @property
    def _redis(self) -> Any:
        """The client, connected at first use; the keys follow it (tagged on a cluster)."""
        client: Any = self._client if self._conn is None else self._conn.get()
        if not self._ready:
            _, self._parts, self._state = batch_keys(*self._batch, cluster=is_cluster(client))
            self._keys = [self._parts, self._state]
            self._push = client.register_script(_PUSH_LUA)
            self._done = client.register_script(_DONE_LUA)
            self._ready = True
        return client

    def push(self, parts: Iterable[str]) -> None:
        with self._errors():
            client = self._redis  # connects first: the keys and scripts follow the client
            chunk: list[str] = []
            for part in parts:
                chunk.append(part)
                if len(chunk) == _PUSH_CHUNK:
                    self._push(keys=self._keys, args=[self._ttl, *chunk], client=client)
                    chunk = []
            if chunk:
                self._push(keys=self._keys, args=[self._ttl, *chunk], client=client)

    def _set_flag(self, field: str) -> None:
        with self._errors():
            pipe = self._redis.pipeline(transaction=True)  # MULTI … EXEC, as the gem
            pipe.hset(self._state, field, 1)
            pipe.expire(self._state, self._ttl)
            pipe.expire(self._parts, self._ttl)
            pipe.execute()

    def done(self, part: str) -> bool:
        with self._errors():
            client = self._redis  # connects first: the keys and scripts follow the client
            reply: Any = self._done(keys=self._keys, args=[part, self._ttl], client=client)
        return bool(reply == 1)

    def count(self) -> int:
        with self._errors():
            reply: Any = self._redis.scard(self._parts)
        return int(reply)

    def total(self) -> int:
        with self._errors():
            reply: Any = self._redis.hget(self._state, "total")
        return int(_text(reply) or 0)

    def flags(self) -> tuple[bool, bool]:
        with self._errors():
            reply: Any = self._redis.hmget(self._state, ["closed", "stopped"])
        closed, stopped = (_text(v) == "1" for v in reply)
        return closed, stopped

    def finished(self) -> bool:
        with self._errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hget(self._state, "closed")
            pipe.scard(self._parts)
            closed, remaining = pipe.execute()
        return _text(closed) == "1" and int(remaining) == 0

    def open_parts(self) -> Iterator[str]:
        with self._errors():
            for member in self._redis.sscan_iter(self._parts):
                part = _text(member)
                assert part is not None
                yield part

    def is_open(self, part: str) -> bool:
        with self._errors():
            reply: Any = self._redis.sismember(self._parts, part)
        return bool(reply)

    def remaining_ttl(self, which: KeyName) -> float | None:
        with self._errors():
            reply: Any = self._redis.pttl(self._parts if which == "parts" else self._state)
        millis = int(reply)
        if millis == -2:
            return None
        return math.inf if millis == -1 else millis / 1000


_clients: dict[str, LazySync] = {}
_clients_lock = threading.Lock()


def client_for(url: str) -> LazySync:
    """One client (one connection pool) per URL, shared by every batch and thread; it
    connects at first use, to a single server or a cluster (whichever the URL names)."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            # Bounded waits, so an unreachable server surfaces as StorageUnavailable instead of
            # a hung job; options in the URL's query string override these.
            client = LazySync(
                url, decode_responses=True, socket_connect_timeout=5.0, socket_timeout=30.0
            )
            _clients[url] = client
        return client


def close_redis_clients() -> None:
    """Close the Redis clients `open_batch` has cached (call on shutdown; later use reopens)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
