"""Releases: a redis-backed group member hears at once that another member released its journal.

A recycling worker releases its journal at its graceful stop (handover.py); the live members
would find it at their next registry beat (`registry_beat`, 5 s by default). Subscribed to the
group's events channel, a member adopts it now instead: on a `release` message, or on any
(re)subscription (a message may have been missed meanwhile), it runs one adoption round. The
message is a hint: adoption itself is the atomic, fenced claim of `JournalClaims.adopt`, and
the beats remain the safety net. Redis away: it resubscribes with a backoff, quietly (the
beat logs the outage).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aredis

from jobreactor.discovery.registry import REDIS_ERRORS
from jobreactor.discovery.watch import follow_channel

logger = logging.getLogger("jobreactor.distributor")


def is_release(data: str | None) -> bool:
    """True for a `release` event, and for a (re)subscription (None): look at once."""
    if data is None:
        return True
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("event") == "release"


class ReleaseListener:
    """Calls `on_release` (one round at a time, coalesced) when a journal may be released."""

    def __init__(
        self, client: aredis.Redis[str], channel: str, on_release: Callable[[], Awaitable[None]]
    ) -> None:
        self.client = client
        self.channel = channel
        self._on_release = on_release
        self._wanted = asyncio.Event()
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._subscribe()), loop.create_task(self._rounds())]

    async def stop(self) -> None:
        self._closing.set()
        self._wanted.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    async def _rounds(self) -> None:
        while not self._closing.is_set():
            await self._wanted.wait()
            self._wanted.clear()
            if self._closing.is_set():
                return
            try:
                await self._on_release()
            except REDIS_ERRORS as exc:
                logger.debug("adoption round after a release hint failed: %s", exc)

    async def _subscribe(self) -> None:
        def on_event(data: str | None) -> None:
            if is_release(data):
                self._wanted.set()

        await follow_channel(self.client, self.channel, on_event, self._closing, "releases")
