"""Startup: a distributor owns its journal and joins its group now, or once Redis answers.

Starting never fails because Redis is unreachable (issue 16). Called from `Distributor.start`
once its sockets listen: with discovery it joins the group (`Presence.start`, which owns the
journal first with redis storage), with redis storage it reads its journal back (`_restore`),
and then it accepts nodes (`serve`: a node that connected before the read would report jobs
not known yet). If Redis does not answer, `start` returns anyway: it retries with backoff,
nodes wait in the listen backlog (their handshake times out and they redial), nothing is
dispatched, and enqueues are refused by the journal write (told, never a false yes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from jobreactor.errors import StorageError

if TYPE_CHECKING:
    from jobreactor.distributor.distributor import Distributor

logger = logging.getLogger("jobreactor.distributor")

_RETRY_MAX_S = 10.0


class Startup:
    def __init__(self, distributor: Distributor) -> None:
        self.distributor = distributor
        self._task: asyncio.Task[None] | None = None
        self._serve: Callable[[], Awaitable[None]] | None = None

    @property
    def pending(self) -> bool:
        """True until the journal is owned and read back (dispatch waits)."""
        return self._task is not None

    async def run(self, serve: Callable[[], Awaitable[None]]) -> None:
        """Own, restore, join and `serve` now; if Redis is away, keep trying in the background."""
        self._serve = serve
        try:
            await self._once()
        except StorageError as exc:
            logger.warning(
                "distributor %s: %s; listening, dispatching nothing until its journal is read "
                "back once redis answers (enqueues are refused until then)",
                self.distributor.address,
                exc,
            )
            self._task = asyncio.get_running_loop().create_task(
                self._retry(), name=f"startup {self.distributor.address}"
            )
            return
        await serve()

    async def _once(self) -> None:
        distributor = self.distributor
        if distributor.presence is not None:
            await distributor.presence.start()  # owns the journal first: it may pick another one
        if distributor.journal is not None:
            await distributor._restore()

    async def _retry(self) -> None:
        delay = self.distributor.settings.reconnect_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self._once()
            except StorageError:
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            break
        assert self._serve is not None
        await self._serve()
        self._task = None
        logger.info(
            "distributor %s: redis answers again; journal read back, accepting nodes",
            self.distributor.address,
        )
        self.distributor.started_late()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
