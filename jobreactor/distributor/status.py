"""What every part of a distributor shares: two flags (only the coordinator and hand-over set
them) and the background tasks it waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Status:
    closed: bool = False  # stop() began: accept nothing, requeue nothing
    sealed: bool = False  # handing over: dispatch nothing, ignore nodes (handover.py)


class Tasks:
    """Background tasks the distributor waits for (feedbacks, key releases, join notices)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout: float | None = None) -> None:
        """Until the tasks running now are done (at most `timeout`)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
