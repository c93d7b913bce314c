"""NodeHandle: what `JR.start_node(...)` returns, a small view of the node it started.

The node itself (jobreactor.node.Node) is the engine: links, attempts, write-behind, timers.
A handle gives an app what it needs of it: its name, whether and to which distributors it is
linked, its counts, its stats, and a way to stop it, from any thread (`stop`, `wait_ready`) or
on the reactor's loop (`astop`, `await_ready`). It only reads the node's public members.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jobreactor.errors import WaitTimeout

if TYPE_CHECKING:  # the annotation only: this module never imports the engine
    from jobreactor.node import Node

T = TypeVar("T")

__all__ = ["NodeHandle", "engine_of"]


class LoopAccess(Protocol):
    """How a handle reaches the reactor's loop (the reactor's LoopHost)."""

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T: ...
    async def hop(self, coro: Coroutine[Any, Any, T]) -> T: ...


class NodeHandle:
    """A node started by `JR.start_node`: its name, links, counts, stats; stop it."""

    __slots__ = ("_loop", "_node")

    def __init__(self, node: Node, loop: LoopAccess) -> None:
        self._node = node  # the engine: for this package's tools and tests only
        self._loop = loop

    def __repr__(self) -> str:
        return (
            f"<NodeHandle {self.name} linked={len(self.linked())} held={self.held_count} "
            f"running={self.running_count}>"
        )

    @property
    def name(self) -> str:
        """The node's name, `{hostname}` expanded."""
        return self._node.name

    @property
    def held_count(self) -> int:
        """Jobs the node holds now: running, due or waiting on its timers."""
        return self._node.held_count

    @property
    def running_count(self) -> int:
        """Attempts running on the node now."""
        return self._node.running_count

    def linked(self) -> list[str]:
        """The distributors (host:port) that welcomed this node and are connected now."""
        return [link.address for link in list(self._node.links) if link.is_ready]

    def stats(self) -> dict[str, Any]:
        """What the node publishes to dashboards: held, running, scheduled, free credit,
        linked distributors, concurrency, control state, limits, metrics."""
        return self._node.stats()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until every configured distributor has welcomed the node once (and discovery
        has looked once); `WaitTimeout` after `timeout`. Not on the reactor's loop."""
        self._loop.call(self.await_ready(timeout), timeout=timeout + 5)

    async def await_ready(self, timeout: float = 10.0) -> None:
        """`wait_ready` for coroutines, on any loop."""
        try:
            await self._loop.hop(self._node.wait_ready(timeout))
        except TimeoutError as exc:
            if isinstance(exc, WaitTimeout):
                raise
            raise WaitTimeout(f"node {self.name} was not linked within {timeout}s") from None

    def stop(self, grace: float | None = None, *, timeout: float | None = None) -> None:
        """Stop the node gracefully from any thread but the loop's: unstarted jobs go back,
        running ones get `grace` seconds (default `shutdown_timeout`), then it closes.
        `timeout` bounds the wait (default: grace plus 30 s)."""
        limit = timeout if timeout is not None else (grace or 0.0) + 30.0
        if grace is None and timeout is None:
            limit = self._node.settings.shutdown_timeout + 30.0
        self._loop.call(self.astop(grace), timeout=limit)

    async def astop(self, grace: float | None = None) -> None:
        """`stop` for coroutines, on any loop."""
        await self._loop.hop(self._node.stop(grace))


def engine_of(handle: NodeHandle) -> Node:
    """The engine behind `handle`, for this package's own tools (the node CLI wires its
    control and supervision hooks into it); not for apps."""
    return handle._node
