"""`RedisLimits`: the limits' slots in Redis, for every node sharing it (storage/limits.py).

The Lua is in storage/limit_scripts.py; the keys in storage/keys.py (`Keys.limit`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import NoScriptError

from jobreactor.errors import StorageError
from jobreactor.limits import SlotRef
from jobreactor.storage.limit_scripts import SCRIPTS

if TYPE_CHECKING:
    from jobreactor.storage.redis import RedisStorage

__all__ = ["RedisLimits"]

# Members per script call (a call holds Redis for well under a millisecond), and script calls
# per pipeline: the calls of one loop turn, grouped by slot, go out in a few pipelines.
_MEMBERS: Final = 500
_PIPELINE: Final = 200
# Scripts that answer per member (the others answer once for the whole call).
_PER_MEMBER: Final = frozenset({"ACQUIRE_SLOT", "ACQUIRE_RATE"})

# (script name, keys, fixed args, members, the caller's future); calls that share the first
# three go out as one script call.
_Call = tuple[str, tuple[str, ...], tuple[Any, ...], list[str], "asyncio.Future[Any]"]


class RedisLimits:
    """On the node's RedisStorage: its client, key prefix and error mapping.

    The calls of one loop turn go out together: those on one slot as one script call (many
    members), all of them in one pipeline. A thousand jobs of one key starting at once cost one
    script call, not a thousand round trips (nor a thousand connections).
    """

    shared = True

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        self._shas: dict[str, str] = {}
        self._client: Any = None
        self._batch: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(
        self, slot: SlotRef, member: str, waiter: str, lease_s: float
    ) -> float | None:
        limit = slot.limit
        if limit.kind == "c":
            name, window_ms = "ACQUIRE_SLOT", _ms(lease_s)
        else:
            name, window_ms = "ACQUIRE_RATE", _ms(limit.period_s)
        keys = self._storage.keys.limit(slot.name)
        (wait_ms,) = await self._run(name, keys, (limit.amount, window_ms, waiter), [member])
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000.0

    async def release(self, slot: SlotRef, member: str) -> list[str]:
        waiters: list[str] = await self._run(
            "RELEASE", self._storage.keys.limit(slot.name), (), [member]
        )
        return waiters

    async def renew(self, slot: str, members: Sequence[str], lease_s: float) -> list[str]:
        holders, _ = self._storage.keys.limit(slot)
        lost: list[str] = await self._run("RENEW", (holders,), (_ms(lease_s),), list(members))
        return lost

    async def _run(
        self, name: str, keys: Sequence[str], fixed: tuple[Any, ...], members: list[str]
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((name, tuple(keys), fixed, members, future))
        if len(self._batch) == 1:
            loop.call_soon(self._send_soon)
        return await future

    def _send_soon(self) -> None:
        batch, self._batch = self._batch, []
        groups: dict[tuple[Any, ...], list[_Call]] = {}
        for call in batch:
            groups.setdefault(call[:3], []).append(call)
        chunks: list[list[_Call]] = []  # one script call each
        for calls in groups.values():
            chunk: list[_Call] = []
            size = 0
            for call in calls:
                if chunk and size + len(call[3]) > _MEMBERS:
                    chunks.append(chunk)
                    chunk, size = [], 0
                chunk.append(call)
                size += len(call[3])
            chunks.append(chunk)
        loop = asyncio.get_running_loop()
        for start in range(0, len(chunks), _PIPELINE):
            task = loop.create_task(self._send(chunks[start : start + _PIPELINE]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, chunks: list[list[_Call]]) -> None:
        try:
            with self._storage._errors("limits"):
                client = await self._storage._redis()
                if client is not self._client:  # first use, or a new client: load the scripts
                    await self._load(client)
                results = await self._pipeline(client, chunks)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # the server restarted empty: load them again, redo those calls
                    await self._load(client)
                    again = await self._pipeline(client, [chunks[i] for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
        except Exception as exc:  # noqa: BLE001 (StorageError, mapped above, or a bug: all hear it)
            results = [exc] * len(chunks)
        for chunk, result in zip(chunks, results, strict=True):
            _answer(chunk, result)

    async def _load(self, client: Any) -> None:
        # SCRIPT LOAD goes to every primary of a cluster.
        self._shas = {name: await client.script_load(text) for name, text in SCRIPTS.items()}
        self._client = client

    async def _pipeline(self, client: Any, chunks: list[list[_Call]]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                name, keys, fixed = chunk[0][:3]
                members = [member for call in chunk for member in call[3]]
                pipe.evalsha(self._shas[name], len(keys), *keys, *fixed, *members)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results


def _answer(chunk: list[_Call], result: Any) -> None:
    """Hand each caller of one script call its part of the answer."""
    name = chunk[0][0]
    if isinstance(result, Exception) and not isinstance(result, StorageError):
        result = StorageError(f"redis refused limit {name.lower()}: {result}")
    offset = 0
    for _, _, _, members, future in chunk:
        if future.done():
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        elif name in _PER_MEMBER:
            future.set_result(result[offset : offset + len(members)])
        else:
            future.set_result(result)
        offset += len(members)


def _ms(seconds: float) -> int:
    return 0 if math.isinf(seconds) else max(1, round(seconds * 1000))
