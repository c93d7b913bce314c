"""Wake-up commands through Redis pub/sub: `send_command` asks a node to (re)schedule a job
from storage, `commands` is the node's subscription (no polling; it resubscribes by itself).
RedisStorage (redis.py) owns one `WakeUps` and hands out its two methods as its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final

import redis.asyncio as aredis
import redis.exceptions

from jobreactor.errors import StorageError
from jobreactor.storage.connect import is_cluster, with_address
from jobreactor.storage.keys import Keys

logger = logging.getLogger("jobreactor.storage.redis")

# The commands subscription: a PING after this long without traffic, reconnect if it goes
# unanswered as long again (a half-open link), and the backoff between resubscriptions.
_COMMANDS_IDLE_S: Final = 15.0
_COMMANDS_BACKOFF_MIN_S: Final = 0.05
_COMMANDS_BACKOFF_MAX_S: Final = 2.0
# Yielded by `commands(..., resync=True)` after a resubscription: commands published while
# the subscription was down are lost (pub/sub is at most once), so look at storage again.
RESYNC: Final = ""


class WakeUps:
    """send_command and commands, over the storage's client (`redis`: connects on first use)
    and its error translation (`errors`)."""

    def __init__(
        self,
        keys: Keys,
        url: str,
        options: dict[str, Any],
        where: str,
        *,
        redis: Callable[[], Awaitable[Any]],
        errors: Callable[[str], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.keys = keys
        self._url, self._options, self._where = url, options, where
        self._redis, self._errors = redis, errors

    async def send_command(self, node: str, job_id: str) -> int:
        """Ask `node` to (re)schedule `job_id` from storage; returns how many subscribers got it.

        Pub/sub is at most once: 0 means no node listens now. The job must already be in
        storage in the state wanted, so a node that was away still finds it when it resumes.
        On a cluster the channel is sharded (SPUBLISH to the master of the node's slot).
        """
        channel = self.keys.commands(node)
        with self._errors("send_command"):
            client = await self._redis()
            if is_cluster(client):
                receivers: int = await client.spublish(channel, job_id)
            else:
                receivers = await client.publish(channel, job_id)
        return receivers

    async def _subscribe(self, channel: str) -> Any:
        """A pub/sub connection subscribed to `channel` (on its slot's master on a cluster)."""
        client = await self._redis()
        if not is_cluster(client):
            pubsub = client.pubsub()
            subscribe = pubsub.subscribe
        else:
            owner = client.get_node_from_key(channel)
            url = with_address(self._url, owner.host, owner.port)
            plain: aredis.Redis[str] = aredis.Redis.from_url(url, **self._options)
            pubsub = plain.pubsub()
            pubsub.owner = plain  # closed with it (see `_unsubscribe`)
            subscribe = pubsub.ssubscribe
        try:
            await subscribe(channel)
        except BaseException:
            # A SUBSCRIBE that timed out against a frozen Redis is still in the socket: left
            # open, Redis would run it once thawed and count a subscriber nobody reads.
            await _unsubscribe(pubsub)
            raise
        return pubsub

    async def commands(self, node: str, *, resync: bool = False) -> AsyncGenerator[str, None]:
        """Job ids published for `node` (by `send_command`), as they come; no polling.

        Runs until the consumer stops iterating (`aclose`) or is cancelled. If Redis goes
        away it resubscribes by itself, with a backoff from 50 ms doubling up to 2 s, logging
        at warning; it never raises anything but CancelledError. Commands sent while it was
        away are lost; with `resync=True` it yields `RESYNC` ("", never a job id) after each
        resubscription, so the caller can look at storage for jobs it missed. On a cluster
        each resubscription asks the slot map again (a failover moves the channel's master).
        """
        channel = self.keys.commands(node)
        delay = _COMMANDS_BACKOFF_MIN_S
        subscribed_before = False
        while True:
            pubsub: Any = None
            try:
                pubsub = await self._subscribe(channel)
                async with contextlib.aclosing(pubsub_events(pubsub)) as events:
                    async for job_id in events:
                        if job_id is not None:
                            yield job_id
                            continue
                        # Subscribed (again, after a reconnect by redis-py or by us): from
                        # here on nothing published is missed.
                        delay = _COMMANDS_BACKOFF_MIN_S
                        if subscribed_before:
                            logger.info("commands of node %s: subscribed again", node)
                            if resync:
                                yield RESYNC
                        subscribed_before = True
            except (redis.exceptions.RedisError, OSError, StorageError) as exc:
                logger.warning(
                    "commands of node %s: redis unreachable (%s): %s; resubscribing in %.2fs",
                    node,
                    self._where,
                    exc,
                    delay,
                )
            except Exception:
                # Not Redis going away: a bug here or in redis-py. Still no raise (the node's
                # listener must outlive it), but loudly, with the traceback.
                logger.exception("commands of node %s: subscription failed", node)
            finally:
                if pubsub is not None:
                    await _unsubscribe(pubsub)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _COMMANDS_BACKOFF_MAX_S)


async def _unsubscribe(pubsub: Any) -> None:
    with contextlib.suppress(redis.exceptions.RedisError, OSError):
        await pubsub.aclose()
        owner = getattr(pubsub, "owner", None)
        if owner is not None:
            await owner.aclose()


async def pubsub_events(pubsub: Any) -> AsyncGenerator[str | None, None]:
    """Job ids arriving on `pubsub`, and None for each subscription confirmed (the first one,
    and those redis-py makes when it reconnects by itself); raises ConnectionError when dead.

    A PING goes out after `_COMMANDS_IDLE_S` of silence; silence as long again means a
    half-open link (no RST ever comes), so the caller resubscribes on a fresh connection.
    """
    awaiting_pong = False
    while True:
        # Raw replies, not get_message(): with decode_responses it drops PING's reply, and
        # any reply at all is what proves the link alive.
        response = await pubsub.parse_response(block=False, timeout=_COMMANDS_IDLE_S)
        if response is None:
            if awaiting_pong:
                raise redis.exceptions.ConnectionError("no answer to PING")
            await pubsub.ping()
            awaiting_pong = True
            continue
        awaiting_pong = False
        if not isinstance(response, list) or len(response) != 3:
            continue  # PING's reply
        kind, _, data = response
        if kind in ("message", "smessage") and isinstance(data, str) and data:
            yield data
        elif kind in ("subscribe", "ssubscribe"):
            yield None
