"""A node's side of DistributedJob batches: is a part's batch stopped; mark a part done.

The batch API is blocking (redis-py or memory): each call runs in the node's thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from jobreactor.batch import Batch, open_batch
from jobreactor.errors import StorageError


class NodeBatches:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: concurrent.futures.ThreadPoolExecutor,
        redis_url: str | None,
    ) -> None:
        self._loop = loop
        self._pool = pool
        self._redis_url = redis_url  # None: memory batches (a node with memory storage)

    async def stopped(self, token: str) -> bool:
        batch = self._open(token)
        return await self._loop.run_in_executor(self._pool, batch.stopped)

    async def done(self, token: str, part: str) -> bool:
        """Mark `part` done; True for the one caller whose part closes the batch."""
        batch = self._open(token)
        return await self._loop.run_in_executor(self._pool, batch.done, part)

    def _open(self, token: str) -> Batch:
        try:
            return open_batch(token, redis_url=self._redis_url)
        except Exception as exc:
            raise StorageError(f"cannot open batch {token}: {exc}") from exc
