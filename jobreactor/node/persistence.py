"""A node's state changes, written behind: batched once per loop turn, retried on failure.

Memory storage keeps the node's own record objects (saved once on receipt), so a state change
needs no write there (only its status indexes follow); a durable storage gets every change,
batched per tick, so storage costs no round trip per job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from jobreactor.errors import StorageError
from jobreactor.job import JobRecord
from jobreactor.ratelimit import RateLimitedLog
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.node")

Spawn = Callable[[Coroutine[Any, Any, Any]], object]


class Persister(Protocol):
    """What the attempt parts need of a node's storage: a changed record, a record gone."""

    def persist(self, record: JobRecord) -> None: ...

    def destroy(self, job_id: str) -> None: ...


class WriteBehind:
    """`persist` and `destroy` now; the writes go out together, soon, and again on failure."""

    def __init__(
        self, node_name: str, storage: Storage, retry_every_s: float, spawn: Spawn
    ) -> None:
        self._name = node_name
        self._storage = storage
        self._retry_every_s = retry_every_s
        self._spawn = spawn
        self._write_behind = storage.durable
        self._note_status = getattr(storage, "note_status", None)
        self._dirty: dict[str, JobRecord] = {}
        self._doomed: set[str] = set()
        self._flushing = False
        # A storage that is down fails every retry: say so every 10 s, not each.
        self._failed_log = RateLimitedLog(logger, logging.ERROR, 10.0)

    @property
    def unwritten(self) -> int:
        return len(self._dirty) + len(self._doomed)

    def persist(self, record: JobRecord) -> None:
        if not self._write_behind:
            # Memory storage holds this very object: nothing to write, but its failed and
            # retrying indexes (storage/status_index.py) follow the status.
            if self._note_status is not None:
                self._note_status(self._name, record)
            return
        self._doomed.discard(record.id)
        self._dirty[record.id] = record
        self._flush_soon()

    def destroy(self, job_id: str) -> None:
        self._dirty.pop(job_id, None)
        self._doomed.add(job_id)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush())

    async def flush_before_stop(self, timeout: float, stop_now: asyncio.Event) -> None:
        """The last writes of a stopping node, bounded by `timeout` (or until `stop_now`):
        a storage that is down must not keep the process running (issue 17)."""
        flush = asyncio.ensure_future(self._flush())
        interrupt = asyncio.ensure_future(stop_now.wait())
        await asyncio.wait({flush, interrupt}, timeout=timeout, return_when="FIRST_COMPLETED")
        interrupt.cancel()
        if flush.done():
            return
        flush.cancel()
        await asyncio.wait({flush}, timeout=1.0)
        logger.warning(
            "%s: %d job state change(s) not stored before stopping (storage unreachable); "
            "those jobs resume from their last stored state at the next start",
            self._name,
            self.unwritten,
        )

    async def _flush(self) -> None:
        try:
            while self._dirty or self._doomed:
                dirty = list(self._dirty.values())
                doomed = list(self._doomed)
                self._dirty.clear()
                self._doomed.clear()
                try:
                    if dirty:
                        await self._storage.save_many(self._name, dirty)
                    if doomed:
                        await self._storage.destroy_many(self._name, doomed)
                except StorageError as exc:
                    self._failed_log("%s: storage write failed (%s); will retry", self._name, exc)
                    for record in dirty:
                        self._dirty.setdefault(record.id, record)
                    self._doomed.update(doomed)
                    await asyncio.sleep(self._retry_every_s)
        finally:
            self._flushing = False
