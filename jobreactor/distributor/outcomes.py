"""Outcomes: how a job's end reaches the app, and the gems' app-side parts.

Feedback callables (closures or names registered with `JR.register_feedback`) are called once
per report, the final one exactly once; an exception in one is logged and contained.
Unique enqueues (dj_one's `enqueue_id`, resque-lock's `loner`) take their keys here, at
enqueue, and give them back when the job starts or ends; the app hears the final outcome only
after that. A batch's `on_complete` runs here when the part that completes it reports.
The distributor owns one `Outcomes`; eager mode (jobreactor.testing) builds its own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jobreactor.errors import StorageError
from jobreactor.handle import JobHandle, WeakHandles
from jobreactor.job import JobRecord
from jobreactor.protocol import ReportItem
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.distributor")

Feedback = Callable[[dict[str, Any]], Any]
# Extra record field: the enqueue-time keys (enqueue_id, loner) the distributor must release.
UNIQUE_KEYS = "unique_keys"


def unique_keys(job: JobRecord) -> list[str]:
    """The enqueue-time keys a journaled job holds (read back at restart or adoption)."""
    keys = (job.extra or {}).get(UNIQUE_KEYS)
    if isinstance(keys, list) and all(isinstance(key, str) for key in keys):
        return keys
    return []


# Sees every report delivered to the app, with its job's name (jobreactor.testing uses it).
Observer = Callable[[str, ReportItem], None]


@dataclass(slots=True)
class Waiting:
    success: Feedback | str | None  # a str names a feedback registered with register_feedback
    error: Feedback | str | None
    handle: JobHandle | None


# What the app keeps per job until its final report: when the job has no feedbacks (the usual
# case), the handle alone, held weakly (`weak`), and NOBODY once the app dropped it: a million
# delayed jobs then cost no Waiting and no handle each.
Awaited = Waiting | JobHandle | weakref.ref[JobHandle]
NOBODY = Waiting(None, None, None)


def awaited(
    success: Feedback | str | None,
    error: Feedback | str | None,
    handle: JobHandle | None,
    weak: WeakHandles | None = None,
) -> Awaited:
    """What to keep for a job: its handle (holding the feedbacks, if any), weakly when it has
    none; a `Waiting` only for feedbacks without a handle (a job read back from a journal)."""
    if success is None and error is None:
        if handle is None:
            return NOBODY
        return handle if weak is None else weak.keep(handle)
    if handle is None:
        return Waiting(success, error, None)
    handle._success, handle._error = success, error
    return handle


def waiting_of(kept: Awaited) -> Waiting:
    if isinstance(kept, Waiting):
        return kept
    if isinstance(kept, JobHandle):
        return Waiting(kept._success, kept._error, kept)
    return Waiting(None, None, kept())


class Outcomes:
    """What the app waits for, per job, and how each report reaches it.

    `spawn` runs a coroutine the owner waits for at stop (async feedbacks, key releases);
    `forget` drops a job from the owner's journal (none: nothing to drop). Eager mode
    (jobreactor.testing) builds one of these with no distributor around it.
    """

    def __init__(
        self,
        storage: Storage,
        unique_ttl: float,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        forget: Callable[[str], None] | None = None,
        named_feedbacks: dict[str, Feedback] | None = None,
        observers: list[Observer] | None = None,
    ) -> None:
        self.storage = storage
        self.unique_ttl = unique_ttl
        self.named_feedbacks: dict[str, Feedback] = (
            named_feedbacks if named_feedbacks is not None else {}
        )
        self.observers: list[Observer] = observers if observers is not None else []
        # Per job accepted and not finished: who hears its outcome.
        self.waiting: dict[str, Awaited] = {}
        self.unique: dict[str, list[str]] = {}  # enqueue-time keys held per job
        self._batch_callbacks: dict[str, Callable[[str], Any]] = {}
        self._spawn = spawn
        self._forget = forget
        self.weak: WeakHandles | None = None  # from hold_weakly: handles without feedbacks

    def hold_weakly(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on a job without feedbacks keeps its handle weakly (handle.WeakHandles):
        a handle the app drops costs nothing while the job waits."""
        self.weak = WeakHandles(loop, self.waiting, NOBODY)

    def bind(self, forget: Callable[[str], None]) -> None:
        """At start, with a journal: how a job is dropped from it."""
        self._forget = forget

    def expect(self, job_id: str, keys: list[str], waiting: Awaited) -> None:
        """A job read back from a journal: who hears it, and the keys it still holds."""
        self.waiting[job_id] = waiting
        if keys:
            self.unique[job_id] = keys  # released at its start or end, as before

    def has_closure(self, job_id: str) -> bool:
        """True if a feedback of `job_id` is a callable (it can't move to another process)."""
        kept = self.waiting.get(job_id)
        if kept is None:
            return False
        waiting = waiting_of(kept)
        return callable(waiting.success) or callable(waiting.error)

    def refused(self, job_id: str) -> None:
        """The job could not be stored: its keys go, its handle is cancelled."""
        self.release_unique(job_id)
        kept = self.waiting.pop(job_id, None)
        handle = None if kept is None else waiting_of(kept).handle
        if handle is not None:
            handle._cancel("refused: it could not be stored")

    def settle_report(self, item: ReportItem, name: str) -> None:
        """What a (checked) report means here: unique keys, batch completion, feedbacks."""
        if item.outcome == "started":
            if "attempt" not in item.args:  # the first attempt (a retry says which it is)
                self.release_unique(item.job_id)
            return
        if item.completes_batch:
            self._batch_complete(item.completes_batch)
        if not item.final:
            waiting = self.waiting.get(item.job_id)
            if waiting is not None:
                self._deliver(waiting, item, name)
            return
        final = self.waiting.pop(item.job_id, None)
        if final is None:
            return
        if self.unique and item.job_id in self.unique:
            # The app hears the outcome once its unique keys are free again (dj_one, loner).
            self.release_unique(item.job_id, then=lambda: self._deliver(final, item, name))
        else:
            self._deliver(final, item, name)

    def _deliver(self, kept: Awaited, item: ReportItem, name: str) -> None:
        """Call the feedback for this report and settle the handle on the final one."""
        handle: JobHandle | None
        if isinstance(kept, JobHandle):  # the usual job: a handle, and its feedbacks if any
            success, error, handle = kept._success, kept._error, kept
        elif isinstance(kept, weakref.ref):  # the same, held weakly: None if the app dropped it
            success, error, handle = None, None, kept()
        else:
            success, error, handle = kept.success, kept.error, kept.handle
        if item.outcome == "success":
            if success is not None:
                self._call(success, item.args, item.job_id)
            if item.final and handle is not None:
                handle._succeed(item.args)
        elif item.outcome == "error":
            if error is not None:
                self._call(error, item.args, item.job_id)
            if handle is not None:
                handle._fail(item.args)
        elif handle is not None:
            handle._cancel()
        for observe in self.observers:  # after the app's own feedback has run
            observe(name, item)

    # --- the gems' app-side parts: unique enqueues (dj_one, loner) and batch completion ------

    async def admit(self, job: JobRecord) -> bool:
        """Take the enqueue-time keys of `job` (enqueue_id, loner); False: refuse the job.

        Keys are held until the job's first attempt starts (the node reports "started"), or
        until it ends, is cancelled or dropped; a TTL (unique_ttl) bounds a lost job's hold.
        """
        storage, ttl, taken = self.storage, self.unique_ttl, []
        try:
            if job.enqueue_id is not None:
                key = f"enqueue:{job.enqueue_id}"
                if not await storage.acquire(key, job.id, ttl):
                    return False
                taken.append(key)
            if job.loner and job.lock is not None:
                key = f"loner:{job.lock}"
                running = await storage.lock_holder(job.lock)
                if running is not None or not await storage.acquire(key, job.id, ttl):
                    for held_key in taken:
                        await storage.release(held_key, job.id)
                    return False
                taken.append(key)
        except BaseException:
            for held_key in taken:
                await storage.release(held_key, job.id)
            raise
        if taken:
            self.unique[job.id] = taken
            # Journaled with the job: a restarted or adopting distributor releases them too.
            job.extra = {**(job.extra or {}), UNIQUE_KEYS: taken}
        return True

    def release_unique(self, job_id: str, then: Callable[[], None] | None = None) -> None:
        keys = self.unique.pop(job_id, None)
        if keys:
            self._spawn(self._release_keys(keys, job_id, then))
        elif then is not None:
            then()

    async def _release_keys(
        self, keys: list[str], job_id: str, then: Callable[[], None] | None
    ) -> None:
        for key in keys:
            try:
                await self.storage.release(key, job_id)
            except StorageError as exc:
                logger.warning("could not release %s of job %s: %s", key, job_id, exc)
        if then is not None:
            then()

    def on_batch_complete(self, token: str, callback: Callable[[str], Any]) -> None:
        """Call `callback(token)` once, when the job that completes batch `token` reports."""
        self._batch_callbacks[token] = callback

    def _batch_complete(self, token: str) -> None:
        callback = self._batch_callbacks.pop(token, None)
        if callback is None:
            return
        try:
            result = callback(token)
        except Exception:
            logger.exception("on_complete of batch %s raised; continuing", token)
            return
        if inspect.isawaitable(result):
            self._spawn(self._await_feedback(result, f"batch {token}"))

    def resolve_cancelled(
        self, job_id: str, reason: str = "cancelled", *, forget: bool = True
    ) -> None:
        """The job ends here without a report. `forget=False` keeps it in the journal."""
        waiting = self.waiting.pop(job_id, None)
        handle = waiting_of(waiting).handle if waiting is not None else None
        if not forget:
            if handle is not None:
                handle._cancel(reason)
            return
        if self._forget is not None:
            self._forget(job_id)
        self.release_unique(job_id, then=None if handle is None else lambda: handle._cancel(reason))

    def _call(self, feedback: Feedback | str | None, args: dict[str, Any], job_id: str) -> None:
        if feedback is None:
            return
        if isinstance(feedback, str):
            named = self.named_feedbacks.get(feedback)
            if named is None:
                logger.warning(
                    "job %s: no feedback registered as %r; register it at start-up",
                    job_id,
                    feedback,
                )
                return
            feedback = named
        try:
            result = feedback(args)
        except Exception:
            # A failing feedback is the app's bug; log it and keep serving.
            logger.exception("feedback for job %s raised; continuing", job_id)
            return
        if result is not None and inspect.isawaitable(result):  # None: the usual, no call
            self._spawn(self._await_feedback(result, job_id))

    async def _await_feedback(self, awaitable: Any, job_id: str) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("async feedback for job %s raised; continuing", job_id)
