"""The app's calls besides enqueue: nodes, cancel, batches, waiting (locks and retries are
in housekeeping.py).

Each hops onto the reactor's loop (or runs there directly when called from it). Reactor
(reactor.py) mixes this in; the attributes below are Reactor's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from jobreactor.batch import Batch, open_batch
from jobreactor.distributor import Distributor
from jobreactor.errors import ReactorClosed
from jobreactor.node import Node

T = TypeVar("T")


class AppCalls:
    """nodes, cancel, batch, wait_for_node, call."""

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
        """A DistributedJob batch (docs/semantics.md §7): in Redis with `redis_url`, else in memory.

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

    def wait_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Block until a node (named `name`, or any) has joined the first distributor."""
        self._call(self.distributor.wait_for_node(name, timeout), timeout=timeout + 1)

    async def await_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """`wait_for_node` for coroutines, on any loop; TimeoutError after `timeout`."""
        await self._hop(self.distributor.wait_for_node(name, timeout))

    async def _hop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the reactor's loop from any loop (run it here if this is that loop)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise ReactorClosed("the reactor is not running: call JR.run() first")
        if self._in_loop_thread():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = 30.0) -> T:
        """Run an async function on the reactor's loop and return its result (for tools/tests)."""

        async def run() -> T:
            return await fn()

        return self._call(run(), timeout)
