"""The app's calls besides enqueue: nodes, cancel, batches, locks, retries, waiting.

Each hops onto the reactor's loop (or runs there directly when called from it). Reactor
(reactor.py) mixes this in; the attributes below are Reactor's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from jobreactor.batch import Batch, open_batch
from jobreactor.distributor import Distributor
from jobreactor.handle import JobHandle
from jobreactor.job import JobStatus
from jobreactor.node import Node
from jobreactor.storage import Storage

T = TypeVar("T")


class AppCalls:
    """nodes, cancel, batch, release_lock, retry, wait_for_node, call."""

    if TYPE_CHECKING:
        _loop: asyncio.AbstractEventLoop | None
        _distributors: list[Distributor]
        _nodes: list[Node]

        @property
        def distributor(self) -> Distributor: ...
        def _in_loop_thread(self) -> bool: ...
        def _drain_inbox(self) -> None: ...
        def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T: ...

    def nodes(self) -> list[dict[str, Any]]:
        """Connected nodes: name, job names, free credit, address, storage, jobs in flight."""
        distributor = self.distributor
        if self._in_loop_thread():
            return distributor.nodes()

        async def get() -> list[dict[str, Any]]:
            return distributor.nodes()

        return self._call(get())

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending, scheduled or periodic job wherever it is; True if found."""
        distributor = self.distributor
        if self._in_loop_thread():
            self._drain_inbox()
            return distributor.cancel(job_id)

        async def do() -> bool:
            self._drain_inbox()
            return distributor.cancel(job_id)

        return self._call(do())

    def batch(
        self,
        token: str | None = None,
        ttl: int = 86_400,
        namespace: str | None = None,
        redis_url: str | None = None,
        *,
        on_complete: Callable[[str], Any] | None = None,
    ) -> Batch:
        """A DistributedJob batch (SPEC §5): Redis with `redis_url`, else this process's memory.

        Jobs enqueued with `{"batch": b.token, "part": part_id}` mark their part done after
        their final successful run (and are skipped once the batch is stopped);
        `on_complete(token)` runs here exactly once, when the part that completes it reports.
        """
        created = open_batch(token, ttl=ttl, namespace=namespace, redis_url=redis_url)
        if on_complete is not None:
            distributor = self.distributor
            callback = on_complete
            if self._in_loop_thread():
                distributor.on_batch_complete(created.token, callback)
            else:

                async def register() -> None:
                    distributor.on_batch_complete(created.token, callback)

                self._call(register())
        return created

    def release_lock(self, key: str) -> bool:
        """Resque Lock's explicit release: delete lock `key` whoever holds it; True if held."""

        async def release() -> bool:
            found = False
            for storage in self._storages():
                found = await storage.force_unlock(key) or found
            return found

        return self._call(release())

    def retry(self, job_id: str) -> bool:
        """Run a failed job (kept because remove_failed_jobs is off) again; True if found.

        It is taken atomically from the node's storage, its attempts reset, and enqueued again
        with the same id (delayed_job's retry of a failed job). No feedbacks are attached.
        """

        async def retry() -> bool:
            for storage in self._storages():
                for node in await storage.nodes():
                    record = await storage.load(node, job_id)
                    if record is None or record.status != JobStatus.FAILED:
                        continue
                    claimed = await storage.claim(node, [job_id])
                    if not claimed:
                        continue
                    job = claimed[0]
                    job.attempt, job.status, job.lease = 0, JobStatus.NEW, 0
                    job.run_at_ts, job.node = time.time(), None
                    self.distributor.submit(job, None, None, JobHandle(job.id))
                    return True
            return False

        return self._call(retry())

    def _storages(self) -> list[Storage]:
        seen: list[Storage] = []
        owners: list[Distributor | Node] = [*self._distributors, *self._nodes]
        for owner in owners:
            if not any(owner.storage is s for s in seen):
                seen.append(owner.storage)
        return seen

    def wait_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Block until a node (named `name`, or any) has joined the first distributor."""
        self._call(self.distributor.wait_for_node(name, timeout), timeout=timeout + 1)

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = 30.0) -> T:
        """Run an async function on the reactor's loop and return its result (for tools/tests)."""

        async def run() -> T:
            return await fn()

        return self._call(run(), timeout)
