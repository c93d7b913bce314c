"""Watcher: a node's view of its group's live distributors, pushed, never polled.

It subscribes to the group's events channel. Every message (join, leave, adopt), every
(re)subscription and every call to `refresh()` (the node's own registry beat: the safety net
for lost messages) triggers one reconcile: read `live_members` and hand the list to
`on_members`. Reconciles never overlap; a trigger during one makes one more run after it. While
Redis is away the last known list stands (logged once), and it resubscribes with a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis

from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import REDIS_ERRORS, Member, live_members
from jobreactor.storage.wakeups import pubsub_events

logger = logging.getLogger("jobreactor.discovery")

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 5.0


class Watcher:
    def __init__(
        self,
        client: aredis.Redis[str],
        keys: GroupKeys,
        prefix: str,
        on_members: Callable[[list[Member]], Any],
        secret: bytes | None = None,
    ) -> None:
        self.client = client
        self._secret = secret  # with one, only entries signed with it are dialled
        self.keys = keys
        self.prefix = prefix
        self._on_members = on_members
        self._wanted = asyncio.Event()
        self.reconciled = asyncio.Event()  # set after the first successful reconcile
        self._failing = False
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscribe(), name=f"watch {self.keys.group}"),
            loop.create_task(self._reconciler(), name=f"reconcile {self.keys.group}"),
        ]
        self.refresh()

    def refresh(self) -> None:
        """Reconcile soon (coalesced with any other trigger)."""
        self._wanted.set()

    async def stop(self) -> None:
        # A flag as well as cancel(): redis-py may turn a cancellation inside a command into a
        # ConnectionError, which the loops below catch; the flag ends them anyway.
        self._closing.set()
        self._wanted.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    async def _reconciler(self) -> None:
        delay = _BACKOFF_MIN_S
        while not self._closing.is_set():
            await self._wanted.wait()
            self._wanted.clear()
            if self._closing.is_set():
                return
            try:
                members = await live_members(
                    self.client, self.keys.group, prefix=self.prefix, secret=self._secret
                )
            except REDIS_ERRORS as exc:
                if not self._failing:
                    logger.warning(
                        "discovery of group %s: redis unreachable (%s); keeping the %s",
                        self.keys.group,
                        exc,
                        "distributors known so far",
                    )
                self._failing = True
                self._wanted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            if self._failing:
                logger.info("discovery of group %s: redis reachable again", self.keys.group)
                self._failing = False
            delay = _BACKOFF_MIN_S
            self._on_members(members)
            self.reconciled.set()

    async def _subscribe(self) -> None:
        # A message, or a (re)subscription after which nothing is missed; or the subscription
        # lost: the reconciler logs the outage once and keeps the last list.
        await follow_channel(
            self.client, self.keys.events, lambda _: self.refresh(), self._closing, "discovery"
        )


async def follow_channel(
    client: aredis.Redis[str],
    channel: str,
    on_event: Callable[[str | None], object],
    closing: asyncio.Event,
    what: str,
) -> None:
    """Until `closing`: subscribed to `channel`, `on_event(data)` for each message, and
    `on_event(None)` for each (re)subscription and each loss of the subscription (a message
    may have been missed meanwhile). Redis away: resubscribes with a backoff, quietly."""
    delay = _BACKOFF_MIN_S
    while not closing.is_set():
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            async with contextlib.aclosing(pubsub_events(pubsub)) as events:
                async for data in events:
                    delay = _BACKOFF_MIN_S
                    on_event(data)
        except REDIS_ERRORS as exc:
            logger.debug("%s: subscription to %s lost: %s", what, channel, exc)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()
        on_event(None)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _BACKOFF_MAX_S)
