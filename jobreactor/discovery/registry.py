"""The registry: who is alive in a group, refreshed by a heartbeat (README "Discovery").

A member (a distributor, or a node that uses discovery) beats every `registry_beat` seconds
(±10 % jitter): one Lua call sets its deadline in the group's zset (Redis `TIME` + TTL, never
the local clock), rewrites its hash (address, stats, ...) with a PEXPIRE of the TTL, drops
members whose deadline has passed, and, when it was not registered (its first beat, or after
an outage long enough for it to expire), publishes `join`. A graceful stop removes it and
publishes `leave`; a crashed member simply expires. Pub/sub messages are hints: readers
reconcile with `live_members`, which reads the zset and the hashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis
import redis.exceptions

from jobreactor.discovery.keys import GroupKeys, Kind, new_iid
from jobreactor.discovery.signing import entry_is_trusted, entry_signature, registry_key
from jobreactor.ratelimit import RateLimitedLog

logger = logging.getLogger("jobreactor.discovery")
_untrusted_log = RateLimitedLog(logger, logging.WARNING, 30.0)

REDIS_ERRORS = (redis.exceptions.RedisError, OSError)

_BEAT = """
-- KEYS[1] members zset, KEYS[2] member hash; ARGV[1] iid, ARGV[2] ttl ms, ARGV[3] channel,
-- ARGV[4] the join message, ARGV[5..] hash field/value pairs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[2])
local new = redis.call('ZADD', KEYS[1], deadline, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('HSET', KEYS[2], 'deadline', deadline, unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if new == 1 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return new
"""

_LEAVE = """
-- KEYS[1] members zset, KEYS[2] member hash; ARGV[1] iid, ARGV[2] channel, ARGV[3] message.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Member:
    """One live member of a group, as `live_members` reads it from the registry.

    `stats` is what the member published with its last beat: `Distributor.stats()` for a
    distributor (address, iid, group, host, pid, started, pending, in_flight, nodes, adopted),
    `Node.stats()` for a node (name, storage, scheduled, running, free_credit, distributors).
    """

    kind: Kind
    iid: str
    address: str
    host: str
    pid: int
    started: float
    deadline_ms: int  # Redis clock: the member counts as gone after this
    stats: dict[str, Any] = field(default_factory=dict)


def _member(kind: Kind, iid: str, raw: dict[str, str]) -> Member | None:
    try:
        stats = json.loads(raw.get("stats", "{}"))
        return Member(
            kind,
            iid,
            raw.get("address", ""),
            raw.get("host", ""),
            int(raw.get("pid", "0")),
            float(raw.get("started", "0")),
            int(raw.get("deadline", "0")),
            stats if isinstance(stats, dict) else {},
        )
    except ValueError as exc:
        logger.warning("registry entry %s is malformed, skipped: %s", iid, exc)
        return None


async def live_members(
    client: aredis.Redis[str],
    group: str = "default",
    *,
    prefix: str = "jr",
    kind: Kind = "distributor",
    secret: bytes | None = None,
) -> list[Member]:
    """The live members of `group` (distributors, or with kind="node" the nodes), by address.

    For dashboards and tools: pass a `redis.asyncio.Redis` made with `decode_responses=True`
    (the `discovery_url`) and the `redis_prefix` in use. A member is live until its deadline
    (Redis clock); one whose hash already expired is left out, and so is one whose deadline
    no real member would set. With `secret`, only entries signed with it count (signing.py).
    Raises redis-py's errors.
    """
    keys = GroupKeys(prefix, group)
    seconds, micros = await client.time()
    now = seconds * 1000 + micros // 1000
    iids: list[str] = await client.zrangebyscore(keys.members(kind), now, "+inf")
    if not iids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for iid in iids:
            pipe.hgetall(keys.member(iid))
        raws: list[dict[str, str]] = await pipe.execute()
    key = None if secret is None else registry_key(secret, group)
    members = []
    for iid, raw in zip(iids, raws, strict=True):
        if not raw:
            continue
        why = entry_is_trusted(key, group, kind, iid, raw, now)
        if why is not None:
            _untrusted_log("registry entry %s of group %s ignored: %s", iid, group, why)
            continue
        members.append(_member(kind, iid, raw))
    return sorted((m for m in members if m is not None), key=lambda m: m.address)


def connect(url: str) -> aredis.Redis[str]:
    """A client for the registry: short timeouts, so an outage shows within a beat."""
    return aredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0
    )


class Registration:
    """One member's presence in its group: beat on a loop timer, leave on stop."""

    def __init__(  # noqa: PLR0913 (all keyword-only past kind)
        self,
        client: aredis.Redis[str],
        keys: GroupKeys,
        kind: Kind,
        address: str,
        stats: Callable[[], dict[str, Any]],
        *,
        beat: float,
        ttl: float,
        on_beat: Callable[[], Any] | None = None,
        iid: str | None = None,
        on_round: Callable[[], None] | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.kind = kind
        self.address = address
        self.iid = iid or new_iid()
        self.started = time.time()
        self._stats = stats
        self._beat_s = beat
        self._ttl_ms = max(1, round(ttl * 1000))
        self._on_beat = on_beat
        self._on_round = on_round
        # time.monotonic() when the last beat round ended, well or not: a gap much longer
        # than a beat means this process was stalled (a blocked loop, SIGSTOP).
        self.last_round = time.monotonic()
        self._key = None if secret is None else registry_key(secret, keys.group)
        self._beat_script = client.register_script(_BEAT)
        self._leave_script = client.register_script(_LEAVE)
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._failing = False
        self.beats = 0

    def _message(self, event: str) -> str:
        return json.dumps(
            {"event": event, "kind": self.kind, "iid": self.iid, "address": self.address}
        )

    async def beat(self) -> bool:
        """One heartbeat; True if it (re)joined. Raises redis errors."""
        fields = {
            "kind": self.kind,
            "address": self.address,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "started": repr(self.started),
            "stats": json.dumps(self._stats(), default=str),
        }
        if self._key is not None:
            fields.update(await self._signed())
        args: list[str] = [
            str(self.iid),
            str(self._ttl_ms),
            self.keys.events,
            self._message("join"),
        ]
        for name, value in fields.items():
            args += (name, value)
        keys = [self.keys.members(self.kind), self.keys.member(self.iid)]
        joined = bool(await self._beat_script(keys=keys, args=args))
        self.beats += 1
        return joined

    async def _signed(self) -> dict[str, str]:
        """`expires` (Redis clock) and its signature: readers with the secret check both."""
        seconds, micros = await self.client.time()
        expires = seconds * 1000 + micros // 1000 + self._ttl_ms
        assert self._key is not None
        sig = entry_signature(
            self._key, self.keys.group, self.kind, str(self.iid), self.address, expires
        )
        return {"expires": str(expires), "sig": sig}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"beat {self.iid}")

    async def _run(self) -> None:
        while not self._closing.is_set():
            try:
                joined = await self.beat()
                if self._failing:
                    logger.info("registry %s reachable again", self.keys.group)
                    self._failing = False
                if joined and self.beats > 1:
                    logger.warning(
                        "%s %s had expired from the registry; joined again", self.kind, self.address
                    )
                if self._on_beat is not None:
                    await self._on_beat()
            except REDIS_ERRORS as exc:
                if not self._failing:
                    logger.warning(
                        "registry of group %s unreachable (%s); %s %s keeps working and "
                        "retries every beat",
                        self.keys.group,
                        exc,
                        self.kind,
                        self.address,
                    )
                self._failing = True
            except Exception:
                # A bug, not Redis: the beat must go on (else we expire and get adopted).
                logger.exception("%s %s: registry beat failed", self.kind, self.address)
            self.last_round = time.monotonic()
            if self._on_round is not None:
                self._on_round()
            with contextlib.suppress(TimeoutError):  # an event, not sleep: stop ends it at once
                await asyncio.wait_for(
                    self._closing.wait(), self._beat_s * random.uniform(0.9, 1.1)
                )

    async def _leave(self) -> None:
        keys = [self.keys.members(self.kind), self.keys.member(self.iid)]
        await self._leave_script(
            keys=keys, args=[self.iid, self.keys.events, self._message("leave")]
        )

    async def renew(self, iid: str) -> None:
        """Go on as a new instance: the old entry leaves, the next beat joins as `iid`."""
        await self._leave()
        self.iid = iid
        self.beats = 0

    async def stop(self) -> None:
        """Stop beating and leave (best effort: a member that can't say so expires by TTL)."""
        self._closing.set()
        if self._task is not None:
            self._task.cancel()  # and the flag: redis-py may swallow a cancellation
            await asyncio.wait([self._task], timeout=2.0)
        try:
            await self._leave()
        except REDIS_ERRORS as exc:
            logger.info("could not leave the registry (%s); the entry expires by its TTL", exc)
