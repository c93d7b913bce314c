"""The batch view's figures (jobreactor.batch): parts done and open, closed, stopped.

Reads the Redis batch store when the dashboard has a `redis_url` (the same Redis and namespace
as the app's `open_batch` calls), else this process's memory batches (a mounted dashboard).
"""

from __future__ import annotations

import itertools
from typing import Any, Final

from jobreactor.batch import open_batch

OPEN_PARTS_SHOWN: Final = 100


class BatchReader:
    def __init__(self, redis_url: str | None = None, namespace: str | None = None) -> None:
        self.redis_url = redis_url
        self.namespace = namespace

    def read(self, token: str) -> dict[str, Any] | None:
        """The batch's figures, or None if no batch has that token (or it expired)."""
        batch = open_batch(token, namespace=self.namespace, redis_url=self.redis_url)
        total = batch.total()
        if not total:
            return None
        open_count = batch.count()
        return {
            "token": token,
            "total": total,
            "open": open_count,
            "done": total - open_count,
            "closed": batch.closed(),
            "stopped": batch.stopped(),
            "finished": batch.finished(),
            "open_parts": sorted(itertools.islice(batch.open_parts(), OPEN_PARTS_SHOWN)),
            "storage": batch.storage,
        }
