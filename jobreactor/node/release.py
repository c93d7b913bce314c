"""After an attempt: its limit slots, its lock (owner only) and its perform id go back
(docs/semantics.md §7). The lock is released only by its owner token, and if it expired first
the `lock_expired` hook runs instead (someone else may hold it now); the perform id is released
unless the job waits for a retry (dj_one keeps it then). With Redis these hold across nodes,
with memory within one node process.
"""

from __future__ import annotations

import logging
import time

from jobreactor.config import ReactorConfig
from jobreactor.definitions import Registry, call_hook
from jobreactor.errors import StorageError
from jobreactor.node.held import HeldJob
from jobreactor.node.limits import NodeLimits
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.node")


def perform_key(perform_id: str) -> str:
    return f"perform:{perform_id}"


class Releaser:
    """Gives back what an attempt took before it ran (guards.py took it)."""

    def __init__(
        self,
        settings: ReactorConfig,
        registry: Registry,
        storage: Storage,
        limits: NodeLimits | None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._storage = storage
        self._limits = limits

    async def release(self, held: HeldJob, *, release_perform: bool) -> None:
        """Free its limit slots, unlock (owner only), and free the perform id unless retrying."""
        record = held.record
        if held.limit_slots and self._limits is not None:
            await self._limits.release(held)  # never raises StorageError: a slot is a lease
        try:
            token, held.lock_token = held.lock_token, None
            if token is not None and record.lock is not None:
                outcome = await self._storage.unlock(record.lock, token)
                timeout = (
                    self._settings.lock_timeout
                    if record.lock_timeout is None
                    else record.lock_timeout
                )
                ran_s = time.time() - (record.run_at or time.time())
                # "not_held" after our timeout ran out: it expired and someone else took it.
                if outcome == "expired" or (outcome == "not_held" and 0 < timeout <= ran_s):
                    definition = self._registry.get(record.name)
                    await call_hook(
                        definition.lock_expired if definition else None,
                        record.args,
                        "lock_expired",
                    )
            if release_perform and held.perform_held and record.perform_id is not None:
                held.perform_held = False
                await self._storage.release(perform_key(record.perform_id), record.id)
        except StorageError as exc:
            # The keys carry a TTL (lock_timeout, unique_ttl), so they cannot block forever.
            logger.warning("job %s: could not release its lock/perform id: %s", record.id, exc)
