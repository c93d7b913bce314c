"""AppCalls: the app's calls besides enqueue: nodes, cancel, batches, waiting for a node, and
running a coroutine on the loop (locks and retries are in housekeeping.py).

A part of `Reactor` (reactor.py): `JR.cancel` is `AppCalls.cancel`. Each call hops onto the
reactor's loop through the LoopHost (or runs there directly when called from it); the
distributor it asks is Members' first; `drain_inbox` (the Enqueuer's) keeps FIFO with jobs
enqueued just before a cancel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jobreactor.batch import Batch, open_batch
from jobreactor.errors import WaitTimeout
from jobreactor.loophost import LoopHost
from jobreactor.starting import Members

T = TypeVar("T")


class AppCalls:
    """nodes, cancel, batch, wait_for_node, await_for_node, call."""

    def __init__(self, host: LoopHost, members: Members, drain_inbox: Callable[[], None]) -> None:
        self._host = host
        self._members = members
        self._drain_inbox = drain_inbox

    def nodes(self) -> list[dict[str, Any]]:
        """Connected nodes: name, job names, free credit, address, storage, jobs in flight."""
        distributor = self._members.first()
        if self._host.in_loop_thread():
            return distributor.nodes()

        async def get() -> list[dict[str, Any]]:
            return distributor.nodes()

        return self._host.call(get())

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending, scheduled or periodic job wherever it is; True if found."""
        distributor = self._members.first()
        if self._host.in_loop_thread():
            self._drain_inbox()
            return distributor.cancel(job_id)

        async def do() -> bool:
            self._drain_inbox()
            return distributor.cancel(job_id)

        return self._host.call(do())

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
            distributor = self._members.first()
            callback = on_complete
            if self._host.in_loop_thread():
                distributor.on_batch_complete(created.token, callback)
            else:

                async def register() -> None:
                    distributor.on_batch_complete(created.token, callback)

                self._host.call(register())
        return created

    def wait_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Block until a node (named `name`, or any) has joined the first distributor;
        WaitTimeout (a TimeoutError) after `timeout`."""
        self._host.call(self.await_for_node(name, timeout), timeout=timeout + 1)

    async def await_for_node(self, name: str | None = None, timeout: float = 10.0) -> None:
        """`wait_for_node` for coroutines, on any loop; WaitTimeout after `timeout`."""
        try:
            await self._host.hop(self._members.first().wait_for_node(name, timeout))
        except TimeoutError as exc:
            if isinstance(exc, WaitTimeout):
                raise
            who = "any node" if name is None else f"node {name!r}"
            raise WaitTimeout(f"{who} did not join within {timeout}s") from None

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = 30.0) -> T:
        """Run an async function on the reactor's loop and return its result (for tools/tests)."""

        async def run() -> T:
            return await fn()

        return self._host.call(run(), timeout)
