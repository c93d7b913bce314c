"""Batches: the Ruby gem distributed_job in Python (docs/semantics.md §7).

A batch tracks a piece of work split into parts that run in parallel, on several nodes or
threads. The producer registers every part; each worker marks its part done; exactly one of
them learns that it finished the last part of the batch:

    batch = open_batch(redis_url="redis://localhost:6379/0")
    for day, part in batch.push_each(days):       # part ids "0", "1", …
        JR.enqueue("report", {"day": day, "batch": batch.token, "part": part})

    # in the job, on any node or thread:
    batch = open_batch(token=args["batch"], redis_url=...)
    if batch.stopped():                            # advisory: parts check it themselves
        return
    ...
    if batch.done(args["part"]):                   # True for exactly one caller
        send_the_report()                          # the completion hook

There is no stored `on_complete` callback: a closure can't be stored in Redis, and any node may
finish the last part. `done(part)` is the primitive instead: it returns True for exactly one
caller, the one that removes the last open part of a *closed* batch, so "if batch.done(part):
run the completion" runs the completion exactly once, whoever gets there last.

Two things make that true, and both come from the gem:

- `push_each` is one behind: it registers item *i* before it hands out item *i−1*, and it closes
  the batch before it hands out the last item. Every part therefore exists before anyone can
  finish it, and the batch is closed before the last part can be finished. A part done before
  the batch is closed never reports completion, so push parts with `push_each` or `push_all`.
- `done` removes the part, reads how many remain and whether the batch is closed in one atomic
  step (a Lua script on Redis, a lock in memory). A part that was already done, or never pushed,
  returns False, so repeating `done` is harmless.

Storage is Redis (shared by every process that uses the same URL and namespace) or memory (one
process; batches with the same token share state). The Redis layout is the gem's, so Ruby and
Python workers can share a batch:

    [<namespace>:]distributed_jobs:<token>:parts   SET of open part ids
    [<namespace>:]distributed_jobs:<token>:state   HASH: total, closed ("1"), stopped ("1")

On a Redis Cluster the two keys get one hash tag, `{[<namespace>:]distributed_jobs:<token>}`,
so the scripts that touch both stay in one slot (the gem itself can't run on a cluster).

Every write sets the expiry of both keys to `ttl` seconds again; a batch nobody writes to for
`ttl` seconds disappears and then reads as one that never existed (`total()` 0, `finished()`
False).

The Redis client is synchronous on purpose: batches are used from job functions and plain
threads, as in the gem. Don't call a Redis batch from the reactor's event loop; a job that
uses one should run with `defer`.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal, Protocol, TypeVar, overload

import redis

from jobreactor.errors import AlreadyClosed
from jobreactor.storage.connect import LazySync, is_cluster, redis_errors
from jobreactor.storage.keys import batch_keys

__all__ = [
    "DEFAULT_TTL",
    "Batch",
    "MemoryStore",
    "close_redis_clients",
    "open_batch",
]

T = TypeVar("T")

DEFAULT_TTL: Final = 86_400  # one day, the gem's default
_PUSH_CHUNK: Final = 1_000  # parts per script call (one round trip) in `push_all`

KeyName = Literal["parts", "state"]


# --- the backend seam ---------------------------------------------------------------------------


class _Backend(Protocol):
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


_MEMORY: Final = MemoryStore()


class _Flags:
    """close/stop are the same write for both backends: set one flag, refresh both TTLs."""

    def _set_flag(self, field: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._set_flag("closed")

    def stop(self) -> None:
        self._set_flag("stopped")


class _MemoryBackend(_Flags):
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


class _RedisBackend(_Flags):
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


def _client_for(url: str) -> LazySync:
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


# --- the public object ----------------------------------------------------------------------------


def _check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"batch ttl must be a whole number of seconds, got {ttl!r}")
    if ttl <= 0:
        raise ValueError(f"batch ttl must be positive, got {ttl}")
    return ttl


class Batch:
    """One distributed job of the gem distributed_job: parts, their completion, a stop flag.

    Build one with `open_batch` (or `JR.batch`). Every process or thread that knows the token,
    the namespace and the storage sees the same batch. Methods are thread-safe and talk to the
    storage on every call; nothing is cached on the object.

    Raises `StorageUnavailable` when Redis can't be reached and `StorageError` for other Redis
    failures.
    """

    def __init__(
        self,
        token: str | None = None,
        ttl: int = DEFAULT_TTL,
        *,
        namespace: str | None = None,
        redis_client: redis.Redis[Any] | redis.cluster.RedisCluster[Any] | LazySync | None = None,
        store: MemoryStore | None = None,
    ) -> None:
        """A batch in Redis if `redis_client` is given, else in `store` (default: the shared one).

        `token` defaults to a random uuid4 hex; `ttl` is in whole seconds and applies to every
        write made through this object.
        """
        if token is None:
            token = uuid.uuid4().hex
        if not token:
            raise ValueError("batch token must be a non-empty string")
        if redis_client is not None and store is not None:
            raise ValueError("give a batch either a redis_client or a memory store, not both")
        self.token: Final = token
        self.ttl: Final = _check_ttl(ttl)
        self.namespace: Final = namespace or None
        #: The gem's key prefix; the keys are `<key>:parts` and `<key>:state` (on a Redis
        #: Cluster `{<key>}:parts` and `{<key>}:state`, so the batch has one slot).
        self.key: Final = batch_keys(self.namespace, token, cluster=False)[0]
        self._backend: _Backend
        if redis_client is not None:
            self._backend = _RedisBackend(redis_client, self.namespace, token, self.ttl)
        else:
            self._backend = _MemoryBackend(store or _MEMORY, self.key, self.ttl)

    @property
    def storage(self) -> str:
        """`"redis"` or `"memory"`."""
        return self._backend.kind

    def __repr__(self) -> str:
        return f"<Batch {self.key} storage={self.storage} ttl={self.ttl}>"

    # --- registering parts ------------------------------------------------------------------

    @overload
    def push_each(self, items: Iterable[T]) -> Iterator[tuple[T, str]]: ...

    @overload
    def push_each(self, items: Iterable[T], callback: Callable[[T, str], object]) -> None: ...

    def push_each(
        self, items: Iterable[T], callback: Callable[[T, str], object] | None = None
    ) -> Iterator[tuple[T, str]] | None:
        """Register each item as a part and hand out `(item, part_id)`, one behind.

        Part ids are the 0-based positions as strings. Item *i* is registered before item
        *i−1* is handed out, and the batch is closed before the last item is handed out, so
        hand each part to a worker inside the loop: by the time any worker can finish the last
        part, every part exists and the batch is closed. An empty `items` closes the batch and
        hands out nothing.

        Without `callback` this returns an iterator, and nothing happens until you iterate it
        (to the end: leaving the loop early leaves the batch open, like an exception inside the
        gem's block). With `callback`, it is called with each `(item, part_id)` and this
        returns None once the batch is closed.

        Raises `AlreadyClosed` at once if the batch is closed.
        """
        self._check_open()
        parts = self._push_each(items)
        if callback is None:
            return parts
        for item, part in parts:
            callback(item, part)
        return None

    def _push_each(self, items: Iterable[T]) -> Iterator[tuple[T, str]]:
        previous: tuple[T, str] | None = None
        for index, item in enumerate(items):
            part = str(index)
            self._backend.push((part,))
            if previous is not None:
                yield previous
            previous = (item, part)
        self._backend.close()
        if previous is not None:
            yield previous

    def push_all(self, parts: Iterable[object]) -> None:
        """Register each value (as `str(value)`) as a part id, then close the batch.

        Use it when the part ids are known up front and the work is handed out afterwards.
        Duplicates count once. Raises `AlreadyClosed` if the batch is closed.
        """
        self._check_open()
        self._backend.push(str(part) for part in parts)
        self._backend.close()

    def _check_open(self) -> None:
        if self.closed():
            raise AlreadyClosed(
                f"batch {self.token!r} is closed already: no more parts can be pushed; "
                "use a new token for new work"
            )

    def _push(self, part: object) -> None:
        """Register one part without closing (the gem's private `push`; tests use it)."""
        self._backend.push((str(part),))

    def _close(self) -> None:
        """Close the batch (the gem's private `close`; `push_each`/`push_all` call it)."""
        self._backend.close()

    # --- finishing parts --------------------------------------------------------------------

    def done(self, part: str | int) -> bool:
        """Mark `part` finished; True for exactly one caller: the one that finished the batch.

        That is the caller that removes the last open part of a closed batch; run the batch's
        completion when this returns True. A part that is unknown or already done leaves the
        batch as it is and returns False, as does finishing every part before the batch is
        closed. Still works after `stop()`.
        """
        return self._backend.done(str(part))

    def stop(self) -> bool:
        """Flag the batch as stopped; always returns True.

        Advisory only: nothing is cancelled. Parts ask `stopped()` before doing their work.
        """
        self._backend.stop()
        return True

    # --- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        """The number of parts pushed and not done yet."""
        return self._backend.count()

    def total(self) -> int:
        """The number of distinct parts ever pushed, done or not (0 for an unknown batch)."""
        return self._backend.total()

    def closed(self) -> bool:
        """True once every part has been pushed (`push_each`/`push_all` close the batch)."""
        return self._backend.flags()[0]

    def stopped(self) -> bool:
        """True if someone called `stop()`."""
        return self._backend.flags()[1]

    def finished(self) -> bool:
        """True if the batch is closed and no part is open (also for a batch of zero parts)."""
        return self._backend.finished()

    def open_parts(self) -> Iterator[str]:
        """The ids of the parts not done yet, in no particular order (SSCAN on Redis)."""
        return self._backend.open_parts()

    def open_part(self, part: str | int) -> bool:
        """True if `part` was pushed and is not done yet."""
        return self._backend.is_open(str(part))

    def remaining_ttl(self, which: KeyName = "state") -> float | None:
        """Seconds before the `parts` or `state` key expires; None if it doesn't exist."""
        return self._backend.remaining_ttl(which)


def open_batch(
    token: str | None = None,
    ttl: int = DEFAULT_TTL,
    namespace: str | None = None,
    redis_url: str | None = None,
) -> Batch:
    """The batch `token` (a new random token if None): in Redis at `redis_url`, else in memory.

    Memory batches live in this process only; two `open_batch` calls with the same token and
    namespace share one batch. Redis clients are cached per URL (`close_redis_clients`).
    """
    if redis_url is not None:
        return Batch(token, ttl, namespace=namespace, redis_client=_client_for(redis_url))
    return Batch(token, ttl, namespace=namespace)
