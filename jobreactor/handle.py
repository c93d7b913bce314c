"""JobHandle: what `enqueue` returns. Wait for the final outcome from any thread or coroutine.

A handle costs almost nothing until somebody waits on it: no Future, no Condition per job (a
`concurrent.futures.Future` per job was 20 % of the whole enqueue-to-feedback path). Waiters
register under one module lock; the distributor resolves the handle once, on its loop.

A job without feedbacks is kept by the distributor through a weak reference to its handle
(`WeakHandles`): a handle the app drops costs nothing while the job waits, a week if need be.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any

from jobreactor.errors import EnqueueTimeout, JobCancelled, JobFailed, WaitTimeout

_LOCK = threading.Lock()


def _new_lock_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the loop thread may have held it at fork: it never returns here


os.register_at_fork(after_in_child=_new_lock_after_fork)
_PENDING, _SUCCEEDED, _FAILED = 0, 1, 2


class JobHandle:
    """`h.id`; `h.result(timeout)` blocks for the final success args; `await h` on a loop.

    The final outcome is the success of a one-shot job (its final args), its error after the
    last attempt (`JobFailed`, args in `.args_dict`), or `JobCancelled`. A periodic job's handle
    resolves only when the job ends (cancelled, or failed for good).
    """

    __slots__ = (
        "__weakref__", "_dropped", "_durable", "_durable_waiters", "_error", "_state", "_success",
        "_value", "_waiters", "id",
    )  # fmt: skip

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self._dropped: WeakHandles | None = None  # kept weakly by it (see WeakHandles)
        # The feedbacks given to enqueue, kept here by the distributor (outcomes.awaited): a
        # job with feedbacks costs one object while it waits, not a handle and a record of
        # who waits. Dropped when the job ends. A str names a registered feedback.
        self._success: Callable[[dict[str, Any]], Any] | str | None = None
        self._error: Callable[[dict[str, Any]], Any] | str | None = None
        self._state = _PENDING
        self._value: Any = None
        self._waiters: list[Callable[[], None]] | None = None
        # None: not yet stored; True: stored; an exception: storing failed.
        self._durable: bool | BaseException | None = None
        self._durable_waiters: list[Callable[[], None]] | None = None

    def accepted(self, timeout: float | None = None) -> bool:
        """Block until the distributor has stored the job; True then.

        With redis storage on the distributor this means it survives a distributor restart;
        with memory storage it is true as soon as the distributor holds it (best effort).
        Raises the storage error (e.g. StorageUnavailable) if the job could not be stored, and
        `EnqueueTimeout` after `timeout`: either way the job was not enqueued and never runs
        (a timed-out job is withdrawn, even if its write lands later; docs/semantics.md §6).
        """
        event = threading.Event()
        with _LOCK:
            if self._durable is None:
                if self._durable_waiters is None:
                    self._durable_waiters = []
                self._durable_waiters.append(event.set)
        if self._durable is None and not event.wait(timeout):
            self._withdraw(EnqueueTimeout(self.id, timeout))
        return self._stored_or_raise()

    async def aaccepted(self, timeout: float | None = None) -> bool:
        """`accepted` for coroutines, on any loop: True once stored; raises as `accepted`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if _running_loop() is loop:  # stored on this very loop (an attached reactor)
                _set_if_pending(future)
            else:
                loop.call_soon_threadsafe(_set_if_pending, future)

        with _LOCK:
            if self._durable is None:
                if self._durable_waiters is None:
                    self._durable_waiters = []
                self._durable_waiters.append(wake)
            else:
                future.set_result(None)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            self._withdraw(EnqueueTimeout(self.id, timeout))
        return self._stored_or_raise()

    def _stored_or_raise(self) -> bool:
        if isinstance(self._durable, BaseException):
            raise self._durable
        return True

    def _withdraw(self, error: BaseException) -> bool:
        """Settle as not stored, unless the store won the race; True if withdrawn.

        Under the lock shared with `_stored`, so exactly one of them decides: the journal asks
        `_stored()` when the write lands and drops the job if this ran first.
        """
        with _LOCK:
            if self._durable is not None:
                return False
            self._durable = error
            waiters, self._durable_waiters = self._durable_waiters, None
        for wake in waiters or ():
            wake()
        return True

    def _stored(self, error: BaseException | None = None) -> bool:
        """Settle as stored (or as failed with `error`); False if it was settled before
        (withdrawn after a timeout: the caller was told it won't run, so it must not)."""
        with _LOCK:
            if self._durable is not None:
                return self._durable is True
            self._durable = True if error is None else error
            waiters, self._durable_waiters = self._durable_waiters, None
        for wake in waiters or ():
            wake()
        return error is None

    @property
    def withdrawn(self) -> bool:
        """True if the job was not stored (timed out, or the storage refused it): never runs."""
        return isinstance(self._durable, BaseException)

    def __del__(self) -> None:
        dropped = self._dropped
        if dropped is not None:
            dropped.gone(self.id)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {'done' if self.done() else 'pending'}>"

    def done(self) -> bool:
        return self._state != _PENDING

    def _outcome(self) -> dict[str, Any]:
        if self._state == _SUCCEEDED:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job's final outcome; WaitTimeout (a TimeoutError) if it takes longer."""
        event = threading.Event()
        with _LOCK:
            if self._state == _PENDING:
                if self._waiters is None:
                    self._waiters = []
                self._waiters.append(event.set)
        if self._state == _PENDING and not event.wait(timeout):
            raise WaitTimeout(f"job {self.id} did not finish within {timeout}s")
        return self._outcome()

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_set_if_pending, future)

        with _LOCK:
            if self._state == _PENDING:
                if self._waiters is None:
                    self._waiters = []
                self._waiters.append(wake)
            else:
                future.set_result(None)
        yield from future.__await__()
        return self._outcome()

    # called by the distributor, on its loop, at most once each
    def _resolve(self, state: int, value: Any) -> None:
        with _LOCK:
            if self._state != _PENDING:
                return
            self._state, self._value = state, value
            waiters, self._waiters = self._waiters, None
            self._success = self._error = None  # called already: a kept handle keeps no closure
        for wake in waiters or ():
            wake()

    def _succeed(self, args: dict[str, Any]) -> None:
        self._resolve(_SUCCEEDED, args)

    def _fail(self, args: dict[str, Any]) -> None:
        self._resolve(_FAILED, JobFailed(self.id, args))

    def _cancel(self, reason: str = "cancelled") -> None:
        self._resolve(_FAILED, JobCancelled(f"job {self.id} {reason}"))


class WeakHandles:
    """Lets `table` (job id -> what waits for the job) hold handles weakly.

    `keep(handle)` gives the weak reference to store as the job's value. When the app drops the
    handle, its id is queued here (from whatever thread dropped it) and, on the loop, a value
    that is still that dead reference becomes `nobody`: the job stays in the table (it is still
    awaited: unique keys, `wait_idle`), at no cost beyond the table's own entry.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, table: dict[str, Any], nobody: object
    ) -> None:
        self._loop, self._table, self._nobody = loop, table, nobody
        self._gone: collections.deque[str] = collections.deque()
        self._sweep_pending = False

    def keep(self, handle: JobHandle) -> weakref.ref[JobHandle]:
        handle._dropped = self
        return weakref.ref(handle)

    def gone(self, job_id: str) -> None:
        """A kept handle was dropped (called from its `__del__`, on any thread)."""
        self._gone.append(job_id)
        if not self._sweep_pending:
            self._sweep_pending = True
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing is awaited now
                self._loop.call_soon_threadsafe(self.sweep)

    def sweep(self) -> None:
        """On the loop: dead references of dropped handles become `nobody`."""
        self._sweep_pending = False
        table, gone, nobody = self._table, self._gone, self._nobody
        while gone:
            job_id = gone.popleft()
            kept = table.get(job_id)
            if type(kept) is weakref.ref and kept() is None:
                table[job_id] = nobody


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _set_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
