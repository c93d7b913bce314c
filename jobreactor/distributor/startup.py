"""Startup: a distributor owns its journal and joins its group now, or once Redis answers.

Starting never fails because Redis is unreachable (issue 16). Called from `Distributor.start`
once its sockets listen: with discovery it joins the group (`Presence.start`, which owns the
journal first with redis storage), with redis storage it reads its journal back
(`Recovery.restore`), and then it accepts nodes (`serve`: a node that connected before the
read would report jobs not known yet). If Redis does not answer, `start` returns anyway: it
retries with backoff, nodes wait in the listen backlog (their handshake times out and they
redial), nothing is dispatched, and enqueues are refused by the journal write (told, never
a false yes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from jobreactor.errors import StorageError

logger = logging.getLogger("jobreactor.distributor")

_RETRY_MAX_S = 10.0


class Startup:
    """`prepare` joins the group and reads the journal back (StorageError: Redis away);
    `on_late` runs once that succeeded later, in the background (dispatch, at last)."""

    def __init__(
        self,
        prepare: Callable[[], Awaitable[None]],
        on_late: Callable[[], None],
        retry_interval: float,
    ) -> None:
        self._prepare = prepare
        self._on_late = on_late
        self._retry_interval = retry_interval
        self.address = ""  # for the log lines (set at start, once bound)
        self._task: asyncio.Task[None] | None = None
        self._serve: Callable[[], Awaitable[None]] | None = None

    @property
    def pending(self) -> bool:
        """True until the journal is owned and read back (dispatch waits)."""
        return self._task is not None

    async def run(self, address: str, serve: Callable[[], Awaitable[None]]) -> None:
        """Own, restore, join and `serve` now; if Redis is away, keep trying in the background."""
        self.address = address
        self._serve = serve
        try:
            await self._prepare()
        except StorageError as exc:
            logger.warning(
                "distributor %s: %s; listening, dispatching nothing until its journal is read "
                "back once redis answers (enqueues are refused until then)",
                self.address,
                exc,
            )
            self._task = asyncio.get_running_loop().create_task(
                self._retry(), name=f"startup {self.address}"
            )
            return
        await serve()

    async def _retry(self) -> None:
        delay = self._retry_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self._prepare()
            except StorageError:
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            break
        assert self._serve is not None
        await self._serve()
        self._task = None
        logger.info(
            "distributor %s: redis answers again; journal read back, accepting nodes",
            self.address,
        )
        self._on_late()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
