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
uses one should run with `defer`. The two storages are in batch_stores.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar, overload

import redis

from jobreactor.batch_stores import (
    SHARED_STORE,
    Backend,
    KeyName,
    MemoryBackend,
    MemoryStore,
    RedisBackend,
    client_for,
    close_redis_clients,
)
from jobreactor.errors import AlreadyClosed, InvalidArgs, InvalidOptions
from jobreactor.storage.connect import LazySync
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


# --- the public object ----------------------------------------------------------------------------


def _check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidArgs(f"batch ttl must be a whole number of seconds, got {ttl!r}")
    if ttl <= 0:
        raise InvalidOptions(f"batch ttl must be positive, got {ttl}")
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
            raise InvalidOptions("batch token must be a non-empty string")
        if redis_client is not None and store is not None:
            raise InvalidOptions("give a batch either a redis_client or a memory store, not both")
        self.token: Final = token
        self.ttl: Final = _check_ttl(ttl)
        self.namespace: Final = namespace or None
        #: The gem's key prefix; the keys are `<key>:parts` and `<key>:state` (on a Redis
        #: Cluster `{<key>}:parts` and `{<key>}:state`, so the batch has one slot).
        self.key: Final = batch_keys(self.namespace, token, cluster=False)[0]
        self._backend: Backend
        if redis_client is not None:
            self._backend = RedisBackend(redis_client, self.namespace, token, self.ttl)
        else:
            self._backend = MemoryBackend(store or SHARED_STORE, self.key, self.ttl)

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
        return Batch(token, ttl, namespace=namespace, redis_client=client_for(redis_url))
    return Batch(token, ttl, namespace=namespace)
