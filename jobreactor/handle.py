"""JobHandle: what `enqueue` returns. Wait for the final outcome from any thread or coroutine."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any

from jobreactor.errors import JobCancelled, JobFailed


class JobHandle:
    """`h.id`; `h.result(timeout)` blocks for the final success args; `await h` on a loop.

    The final outcome is the success of a one-shot job (its final args), its error after the
    last attempt (`JobFailed`, args in `.args_dict`), or `JobCancelled`. A periodic job's handle
    resolves only when the job ends (cancelled, or failed for good).
    """

    __slots__ = ("_future", "id")

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self._future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {'done' if self.done() else 'pending'}>"

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job's final outcome; raise TimeoutError if it takes longer."""
        return self._future.result(timeout)

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return asyncio.wrap_future(self._future).__await__()

    # called by the distributor, on its loop, exactly once
    def _succeed(self, args: dict[str, Any]) -> None:
        if not self._future.done():
            self._future.set_result(args)

    def _fail(self, args: dict[str, Any]) -> None:
        if not self._future.done():
            self._future.set_exception(JobFailed(self.id, args))

    def _cancel(self, reason: str = "cancelled") -> None:
        if not self._future.done():
            self._future.set_exception(JobCancelled(f"job {self.id} {reason}"))
