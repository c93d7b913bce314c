"""RedisStorage: durable jobs, queues, unique keys and locks in Redis.

The key layout is in `jobreactor.storage.keys` (one hash tag per owner, so a Redis Cluster
spreads the data; every script touches one tag), the record codec in `storage.codec`, the Lua
in `storage.scripts`. `redis_url` may name a single server or any node of a cluster: the first
call asks `INFO cluster` and, on a cluster, goes on through `RedisCluster`.

`KEYS` is never used: whole-node reads go through the index set. Nothing outside
`jobreactor/storage/` and `jobreactor/monitor.py` knows these keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import typing
import uuid
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff

from jobreactor.errors import ConfigError, StorageError
from jobreactor.job import JobRecord
from jobreactor.storage import scripts, status_index
from jobreactor.storage.base import UnlockResult
from jobreactor.storage.codec import (
    decode_fields,
    decode_job,
    dump_json,
    is_unfinished,
    load_json,
    pack_job,
    record_json,
    redact_url,
)
from jobreactor.storage.connect import (
    DEFAULT_REDIS_URL,
    is_cluster,
    open_async,
    redis_errors,
)
from jobreactor.storage.keys import Keys
from jobreactor.storage.queue_sync import SyncQueueWriter
from jobreactor.storage.wakeups import RESYNC, WakeUps

# The codec and connection helpers are re-exported: this was their home before issue 13.
__all__ = [
    "DEFAULT_REDIS_URL",
    "RESYNC",
    "RedisStorage",
    "decode_fields",
    "dump_json",
    "is_unfinished",
    "load_json",
    "redact_url",
    "redis_errors",
]

logger = logging.getLogger(__name__)

# Jobs per SSCAN page and per Lua call (a call blocks Redis for a few ms at most).
_CHUNK: Final = 1000


def _ms(seconds: float | None) -> int:
    """Seconds -> whole milliseconds, at least 1 for a positive time; None/<=0 -> 0 (never)."""
    if seconds is None or not seconds > 0:
        return 0
    if math.isinf(seconds):
        return 0
    return max(1, round(seconds * 1000))


class RedisStorage:
    """The `Storage` protocol on `redis.asyncio` (hiredis parser when installed).

    `options` go to `redis.asyncio.Redis.from_url` (e.g. `socket_timeout`, `max_connections`),
    or to `RedisCluster.from_url` when the url names a cluster node. Every method costs a small
    fixed number of round trips per call (per owner's slot), not per job.
    """

    kind = "redis"
    durable = True

    def __init__(self, url: str = DEFAULT_REDIS_URL, prefix: str = "jr", **options: Any) -> None:
        self.keys = Keys(prefix)
        self.prefix = prefix
        self._url = url
        self._where = redact_url(url)
        options["decode_responses"] = True
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("socket_timeout", 10.0)
        # A few quick retries ride out a blip; after that callers get StorageUnavailable fast.
        options.setdefault("retry", Retry(EqualJitterBackoff(cap=0.5, base=0.02), 3))
        self._options = options
        try:  # validates the url now; the connection (and cluster detection) comes at first use
            aredis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"invalid redis_url {self._where!r}: {exc}") from exc
        self._client: Any = None
        self._connecting: asyncio.Lock | None = None
        self._scripts: dict[str, Any] = {}
        self._listed: set[str] = set()  # nodes this process has put in the `nodes` directory
        self._closed = False
        # Pub/sub wake-ups (wakeups.py): this storage's `send_command` and `commands`.
        wakeups = WakeUps(
            self.keys, url, options, self._where, redis=self._redis, errors=self._errors
        )
        self.send_command = wakeups.send_command
        self.commands = wakeups.commands

    def __repr__(self) -> str:
        return f"<RedisStorage {self._where} prefix={self.prefix!r}>"

    @property
    def cluster(self) -> bool:
        """True once connected to a Redis Cluster (False before the first call)."""
        return is_cluster(self._client)

    def _errors(self, operation: str) -> contextlib.AbstractContextManager[None]:
        return redis_errors(operation, self._where)

    async def _redis(self) -> Any:
        """The client, connected on first use (a single server or a cluster)."""
        client = self._client
        if client is not None:
            return client
        if self._closed:
            raise StorageError(f"redis storage {self._where} is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                client = await open_async(self._url, self._where, dict(self._options))
                self._scripts = {
                    name: client.register_script(getattr(scripts, name)) for name in scripts.NAMES
                }
                for name, body in status_index.SCRIPTS.items():
                    self._scripts[name] = client.register_script(body)
                self._client = client
        return self._client

    async def _script(self, name: str, keys: list[str], args: Sequence[Any] = ()) -> Any:
        await self._redis()
        return await self._scripts[name](keys=keys, args=list(args))

    # --- jobs held by a node ------------------------------------------------------------------

    async def save_many(self, node: str, jobs: Sequence[JobRecord]) -> None:
        if not jobs:
            return
        # One script call per 1000 jobs, one msgpack argument per job: redis-py's Python
        # per-argument packing, not Redis, was the cost of pipelined HSETs (40 -> 14 us/job).
        packed = [pack_job(job) for job in jobs]
        codes = [status_index.save_code(job) for job in jobs]  # "u": periodic update
        index = self._indexes(node)
        with self._errors("save_many"):
            if node not in self._listed:
                # The directory has its own slot, so it is written apart from the jobs (once
                # per process and node; before them, so a node with jobs is always listed).
                await (await self._redis()).sadd(self.keys.nodes, node)
                self._listed.add(node)
            for start in range(0, len(jobs), _CHUNK):
                job_keys = [self.keys.job(node, job.id) for job in jobs[start : start + _CHUNK]]
                args = packed[start : start + _CHUNK] + codes[start : start + _CHUNK]
                await self._script("SAVE_INDEXED", [*index, *job_keys], args)

    async def destroy_many(self, node: str, job_ids: Sequence[str]) -> None:
        index = self._indexes(node)
        with self._errors("destroy_many"):
            for start in range(0, len(job_ids), _CHUNK):
                chunk = job_ids[start : start + _CHUNK]
                keys = [*index, *[self.keys.job(node, job_id) for job_id in chunk]]
                await self._script("DESTROY_INDEXED", keys, chunk)

    async def load(self, node: str, job_id: str) -> JobRecord | None:
        key = self.keys.job(node, job_id)
        with self._errors("load"):
            raw = await (await self._redis()).hgetall(key)
        if not raw:
            return None
        try:
            return decode_job(job_id, raw)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"stored job {key} is malformed: {exc}") from exc

    async def jobs_for(self, node: str, *, unfinished_only: bool = False) -> list[JobRecord]:
        out: list[JobRecord] = []
        with self._errors("jobs_for"):
            async for ids in self._index_pages(node):
                keys = [self.keys.job(node, job_id) for job_id in ids]
                flats: list[list[str]] = await self._script("LOAD_MANY", keys)
                for job_id, flat in zip(ids, flats, strict=True):
                    raw = dict(zip(flat[::2], flat[1::2], strict=True))
                    if not raw or (unfinished_only and not is_unfinished(raw.get("status"))):
                        continue
                    try:
                        out.append(decode_job(job_id, raw))
                    except (ValueError, TypeError) as exc:
                        # Left in place for an operator (RedisMonitor); one bad record must
                        # not stop a node from resuming all the others.
                        logger.warning("skipping malformed job %s: %s", job_id, exc)
        return out

    async def _index_pages(self, node: str) -> typing.AsyncIterator[list[str]]:
        """The node's job ids, a page at a time (SSCAN: no long blocking call on big sets)."""
        client = await self._redis()
        seen: set[str] = set()
        cursor = 0
        while True:
            cursor, ids = await client.sscan(self.keys.index(node), cursor, count=_CHUNK)
            page = [job_id for job_id in ids if job_id not in seen]  # SSCAN may repeat
            seen.update(page)
            if page:
                yield page
            if cursor == 0:
                return

    def _indexes(self, node: str) -> list[str]:
        """The node's index set, failed zset and retrying zset (status_index.py)."""
        tag = self.keys.node_tag(node)
        return [
            self.keys.index(node),
            *(status_index.index_key(tag, k) for k in status_index.KINDS),
        ]

    async def index_count(self, node: str, kind: status_index.IndexKind) -> int:
        with self._errors("index_count"):
            key = status_index.index_key(self.keys.node_tag(node), kind)
            return int(await (await self._redis()).zcard(key))

    async def index_page(
        self, node: str, kind: status_index.IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]:
        key = status_index.index_key(self.keys.node_tag(node), kind)
        with self._errors("index_page"):
            client = await self._redis()
            stop = start + count - 1
            if kind == "failed":
                rows = await client.zrevrange(key, start, stop, withscores=True)
            else:
                rows = await client.zrange(key, start, stop, withscores=True)
        return [(str(job_id), float(score)) for job_id, score in rows]

    async def nodes(self) -> list[str]:
        with self._errors("nodes"):
            client = await self._redis()
            names = sorted(await client.smembers(self.keys.nodes))
            if not names:
                return []
            # One SCARD per node, each in its node's slot (a cluster pipeline splits by slot).
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.scard(self.keys.index(name))
                sizes: list[int] = await pipe.execute()
        return [name for name, size in zip(names, sizes, strict=True) if size]

    async def claim(self, from_node: str, job_ids: Sequence[str]) -> list[JobRecord]:
        out: list[JobRecord] = []
        token = uuid.uuid4().hex
        index = self.keys.index(from_node)
        for start in range(0, len(job_ids), _CHUNK):
            chunk = list(job_ids[start : start + _CHUNK])
            keys = [index, self.keys.claim(from_node, f"{token}:{start}")]
            keys += self._indexes(from_node)[1:]
            keys += [self.keys.job(from_node, job_id) for job_id in chunk]
            with self._errors("claim"):
                # Atomic per chunk; the answer is logged under a fresh token so a retry after
                # a lost reply returns the same jobs instead of losing them.
                reply: list[Any] = await self._script("CLAIM_INDEXED", keys, chunk)
            for i in range(0, len(reply), 2):
                job_id, flat = reply[i], reply[i + 1]
                raw = dict(zip(flat[::2], flat[1::2], strict=True))
                if not raw:
                    continue
                try:
                    out.append(decode_job(job_id, raw))
                except (ValueError, TypeError) as exc:
                    logger.warning("claimed job %s is malformed, dropped: %s", job_id, exc)
        return out

    # --- a distributor's durable queue ----------------------------------------------------------

    async def queue_save(self, queue: str, jobs: Sequence[JobRecord]) -> None:
        if not jobs:
            return
        keys = [*self.keys.queue(queue), self.keys.withdrawn(queue)]
        args: list[str] = []
        for job in jobs:
            args += (job.id, record_json(job))
        with self._errors("queue_save"):
            for start in range(0, len(args), 2 * _CHUNK):
                await self._script("QUEUE_SAVE", keys, args[start : start + 2 * _CHUNK])

    async def queue_withdraw(self, queue: str, job_ids: Sequence[str]) -> None:
        jobs_key, order_key, _ = self.keys.queue(queue)
        keys = [jobs_key, order_key, self.keys.withdrawn(queue)]
        with self._errors("queue_withdraw"):
            for start in range(0, len(job_ids), _CHUNK):
                await self._script("QUEUE_WITHDRAW", keys, job_ids[start : start + _CHUNK])

    async def queue_update(
        self,
        queue: str,
        save: Sequence[JobRecord],
        remove: Sequence[str],
        withdraw: Sequence[str],
    ) -> None:
        """`queue_save(save)`, `queue_remove(remove)`, `queue_withdraw(withdraw)` in that
        order, in one round trip (a journal's writes of one loop turn)."""
        if len(save) + len(remove) + len(withdraw) > _CHUNK:
            await self.queue_save(queue, save)
            await self.queue_remove(queue, remove)
            await self.queue_withdraw(queue, withdraw)
            return
        args: list[Any] = [len(save), len(remove)]
        for job in save:
            args += (job.id, record_json(job))
        args += remove
        args += withdraw
        keys = [*self.keys.queue(queue), self.keys.withdrawn(queue)]
        with self._errors("queue_update"):
            await self._script("QUEUE_UPDATE", keys, args)

    def sync_writer(self, timeout_s: float) -> SyncQueueWriter:
        """A blocking writer of this storage's journals, for the enqueuing thread (one round
        trip, no hop through the loop); calls on it time out after `timeout_s`, connecting
        after this storage's own `socket_connect_timeout` at most."""
        connect = self._options.get("socket_connect_timeout")
        return SyncQueueWriter(self._url, self.keys, timeout_s, connect)

    async def queue_remove(self, queue: str, job_ids: Sequence[str]) -> None:
        keys = list(self.keys.queue(queue))
        with self._errors("queue_remove"):
            for start in range(0, len(job_ids), _CHUNK):
                chunk = job_ids[start : start + _CHUNK]
                await self._script("QUEUE_REMOVE", keys, chunk)

    async def queue_load(self, queue: str) -> list[JobRecord]:
        jobs_key, order_key, _ = self.keys.queue(queue)
        out: list[JobRecord] = []
        low = "-inf"
        with self._errors("queue_load"):
            client = await self._redis()
            while True:
                page = await client.zrangebyscore(
                    order_key, low, "+inf", start=0, num=_CHUNK, withscores=True
                )
                if not page:
                    return out
                ids = [job_id for job_id, _ in page]
                for job_id, text in zip(ids, await client.hmget(jobs_key, ids), strict=True):
                    if text is None:
                        continue
                    try:
                        out.append(JobRecord.from_dict(load_json(text)))
                    except (ValueError, TypeError) as exc:
                        logger.warning("skipping malformed queued job %s: %s", job_id, exc)
                low = f"({page[-1][1]!r}"

    # --- unique keys ------------------------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        with self._errors("acquire"):
            taken = await self._script("ACQUIRE", [self.keys.uniq(key)], [owner, _ms(ttl_s)])
        return bool(taken)

    async def release(self, key: str, owner: str) -> bool:
        with self._errors("release"):
            return bool(await self._script("RELEASE", [self.keys.uniq(key)], [owner]))

    async def holder(self, key: str) -> str | None:
        with self._errors("holder"):
            holder: str | None = await (await self._redis()).get(self.keys.uniq(key))
            return holder

    # --- locks with expiry --------------------------------------------------------------------

    async def lock(self, key: str, token: str, timeout_s: float | None) -> bool:
        with self._errors("lock"):
            taken = await self._script("LOCK", [self.keys.lock(key)], [token, _ms(timeout_s)])
        return bool(taken)

    async def unlock(self, key: str, token: str) -> UnlockResult:
        with self._errors("unlock"):
            result = await self._script("UNLOCK", [self.keys.lock(key)], [token])
        if result == "released":
            return "released"
        if result == "expired":
            return "expired"
        return "not_held"

    async def lock_holder(self, key: str) -> str | None:
        with self._errors("lock_holder"):
            holder: str | None = await self._script("LOCK_HOLDER", [self.keys.lock(key)])
        return holder

    async def force_unlock(self, key: str) -> bool:
        with self._errors("force_unlock"):
            return bool(await (await self._redis()).delete(self.keys.lock(key)))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with self._errors("aclose"):
                await client.aclose()
