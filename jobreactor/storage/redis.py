"""RedisStorage: durable jobs, queues, unique keys and locks in Redis (SPEC 1.13 PY-REQ).

Key layout (every key carries the one hash tag `{<prefix>}`, so all of them live in one
Redis Cluster slot and multi-key commands, MULTI and Lua scripts stay legal there):

    {jr}:job:<node>:<id>      hash   one job: SPEC 1.13 field names (+ every other non-default
                                     JobRecord field), args and extras as JSON, numbers as
                                     text, bools "true"/"false"; a None field is absent
    {jr}:node:<node>:jobs     set    ids of the jobs stored for <node> (the per-node index)
    {jr}:node:<node>:commands pub/sub channel: job ids <node> should (re)schedule from storage
                                     (RedisMonitor.retry publishes; a channel, not a key)
    {jr}:nodes                set    names of nodes that ever stored jobs
    {jr}:queue:<queue>:jobs   hash   id -> JSON record (a distributor's durable queue)
    {jr}:queue:<queue>:order  zset   id scored by a sequence number: oldest first
    {jr}:queue:<queue>:seq    string that sequence
    {jr}:uniq:<key>           string owner of a unique key (dj_one, loner), with a Redis TTL
    {jr}:lock:<key>           string "<token>:<expiry ms, Redis clock>" ("<token>:0": never expires)
    {jr}:claim:<token>        string the answer to one claim, kept a minute (idempotent retries)

`KEYS` is never used: whole-node reads go through the index set (SPEC D16). Nothing outside
`jobreactor/storage/` and `jobreactor/monitor.py` knows these keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import types
import typing
import uuid
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import fields
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis.asyncio as aredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff

from jobreactor.errors import ConfigError, StorageError, StorageUnavailable
from jobreactor.job import FINISHED_STATUSES, JobRecord
from jobreactor.storage.base import UnlockResult

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL: Final = "redis://localhost:6379"
# Jobs per SSCAN page and per Lua call (a call blocks Redis for a few ms at most).
_CHUNK: Final = 1000
# An expired lock stays readable this long (so `unlock` can say "expired"), then Redis drops it.
_LOCK_GRACE_MS: Final = 86_400_000
_CLAIM_LOG_MS: Final = 60_000
# The commands subscription: a PING after this long without traffic, reconnect if it goes
# unanswered as long again (a half-open link), and the backoff between resubscriptions.
_COMMANDS_IDLE_S: Final = 15.0
_COMMANDS_BACKOFF_MIN_S: Final = 0.05
_COMMANDS_BACKOFF_MAX_S: Final = 2.0
# Yielded by `commands(..., resync=True)` after a resubscription: commands published while
# the subscription was down are lost (pub/sub is at most once), so look at storage again.
RESYNC: Final = ""

# --- the record codec (shared with jobreactor.monitor) ------------------------------------------

# SPEC 1.13 ATTRS that are always written, default or not, so external tools find them.
_ALWAYS: Final = frozenset(
    {"id", "name", "args", "attempt", "period", "make_after", "status", "distributor", "defer"}
)


def _kind(hint: Any) -> str:
    """Codec of one JobRecord field from its type: bool, int, float, str (or Optional), json."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = set(typing.get_args(hint)) - {type(None)}
        hint = options.pop() if len(options) == 1 else None
    names: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(hint, "json")


_HINTS: Final = typing.get_type_hints(JobRecord)
_FIELDS: Final = tuple(
    (f.name, _kind(_HINTS[f.name]), f.default, f.name in _ALWAYS)
    for f in fields(JobRecord)
    if f.name != "extra"
)
FIELD_KINDS: Final[dict[str, str]] = {name: kind for name, kind, _, _ in _FIELDS}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not storable (use JSON/msgpack types)")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__bytes__" in obj and isinstance(obj["__bytes__"], str):
        return base64.b64decode(obj["__bytes__"])
    return obj


def dump_json(value: Any) -> str:
    """JSON readable by any tool; bytes become {"__bytes__": "<base64>"}."""
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)


def load_json(text: str) -> Any:
    return json.loads(text, object_hook=_json_hook)


def _encode_value(kind: str, value: Any) -> str:
    if kind == "str":
        return str(value)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "int":
        return str(int(value))
    if kind == "float":
        return repr(float(value))
    return dump_json(value)


def encode_job(job: JobRecord) -> dict[str, str]:
    """The hash fields of one job: SPEC 1.13 names, every non-default field, extras as JSON.

    A field that is None is left out (absent means None), so `""` and None stay distinct.
    """
    out: dict[str, str] = {}
    for name, kind, default, always in _FIELDS:
        value = getattr(job, name)
        if value is None or (not always and value == default):
            continue
        out[name] = _encode_value(kind, value)
    if job.extra:
        for key, value in job.extra.items():
            if key not in FIELD_KINDS:
                out[key] = dump_json(value)
    return out


_TRUE: Final = frozenset({"true", "1", "yes", "True", "TRUE"})


def _decode_value(kind: str, text: str) -> Any:
    if kind == "str":
        return text
    if kind == "bool":
        return text in _TRUE
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return int(float(text))  # "1.0" written by hand
    if kind == "float":
        return float(text)
    return load_json(text)


def decode_fields(raw: dict[str, str]) -> dict[str, Any]:
    """Hash fields -> the dict `JobRecord.from_dict` takes (typed values, extras as keys).

    Raises ValueError for a value that doesn't parse as its field's type.
    """
    out: dict[str, Any] = {}
    for key, text in raw.items():
        kind = FIELD_KINDS.get(key)
        if kind is None:  # an extra, written by us as JSON (or by hand as plain text)
            try:
                out[key] = load_json(text)
            except ValueError:
                out[key] = text
            continue
        try:
            out[key] = _decode_value(kind, text)
        except ValueError as exc:
            raise ValueError(f"field {key!r}={text!r} is not a valid {kind}: {exc}") from None
    return out


def decode_job(job_id: str, raw: dict[str, str]) -> JobRecord:
    """One stored hash as a record; `id`/`name`/`args` default sensibly if a tool left them out."""
    data = decode_fields(raw)
    data.setdefault("id", job_id)
    data.setdefault("name", "")
    data.setdefault("args", {})
    return JobRecord.from_dict(data)


def is_unfinished(raw_status: str | None) -> bool:
    return raw_status not in FINISHED_STATUSES


def redact_url(url: str) -> str:
    """The url without its password, for error messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def check_prefix(prefix: str) -> str:
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"redis key prefix must be non-empty and brace-free, got {prefix!r}")
    return prefix


class Keys:
    """Every Redis key jobreactor uses, in one place."""

    def __init__(self, prefix: str) -> None:
        self.base = "{" + check_prefix(prefix) + "}"
        self.nodes = f"{self.base}:nodes"

    def job(self, node: str, job_id: str) -> str:
        return f"{self.base}:job:{node}:{job_id}"

    def index(self, node: str) -> str:
        return f"{self.base}:node:{node}:jobs"

    def queue(self, queue: str) -> tuple[str, str, str]:
        stem = f"{self.base}:queue:{queue}"
        return f"{stem}:jobs", f"{stem}:order", f"{stem}:seq"

    def uniq(self, key: str) -> str:
        return f"{self.base}:uniq:{key}"

    def lock(self, key: str) -> str:
        return f"{self.base}:lock:{key}"

    def claim(self, token: str) -> str:
        return f"{self.base}:claim:{token}"

    def commands(self, node: str) -> str:
        """The pub/sub channel of wake-up commands for `node` (same hash tag as its keys)."""
        return f"{self.base}:node:{node}:commands"


@contextlib.contextmanager
def redis_errors(operation: str, where: str) -> Iterator[None]:
    """Translate redis-py errors into ours at the boundary (STYLE 11)."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StorageUnavailable(
            f"redis unreachable during {operation}: {exc}; "
            f"check redis_url ({where}) and that redis-server runs"
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise StorageError(f"redis refused {operation} ({where}): {exc}") from exc


# --- Lua -------------------------------------------------------------------------------------

_CLAIM = """
-- KEYS[1] index set, KEYS[2] claim log, KEYS[3..] job hashes; ARGV: the ids, same order.
local done = redis.call('GET', KEYS[2])
if done then return cmsgpack.unpack(done) end
local out = {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = redis.call('HGETALL', KEYS[i + 2])
    redis.call('DEL', KEYS[i + 2])
  end
end
redis.call('SET', KEYS[2], cmsgpack.pack(out), 'PX', ARGV_LOG_MS)
return out
""".replace("ARGV_LOG_MS", str(_CLAIM_LOG_MS))

_SAVE = """
-- KEYS[1] index set, KEYS[2] node names, KEYS[3..] job hashes;
-- ARGV[1] node name, ARGV[2..] msgpack [id, field1, value1, ...] for KEYS[3..].
-- Atomic: a job is never seen half-written, nor between its DEL and HSET by a claim. DEL
-- first, so fields that went back to None/default don't linger.
redis.call('SADD', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  local flat = cmsgpack.unpack(ARGV[i - 1])
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], unpack(flat, 2))
  redis.call('SADD', KEYS[1], flat[1])
end
return #KEYS - 2
"""

_LOAD_MANY = """
-- KEYS: job hashes. One command for a page of jobs (cheaper to send than HGETALL each).
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

_QUEUE_SAVE = """
-- KEYS: jobs hash, order zset, sequence; ARGV: id1, record1, id2, record2, ...
for i = 1, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
  end
end
return 1
"""

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A lock value is "<token>:<expiry ms>" on Redis's own clock (TIME), 0 meaning never. A value
# written by someone else without that suffix counts as a lock that never expires.
_LOCK_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
local holder, expiry = nil, 0
if cur then
  holder, expiry = string.match(cur, '^(.*):(%d+)$')
  if holder then expiry = tonumber(expiry) else holder, expiry = cur, 0 end
end
local live = cur and (expiry == 0 or expiry > now)
"""

_LOCK = (
    _LOCK_PRELUDE
    + """
if live and holder ~= ARGV[1] then return 0 end
local timeout = tonumber(ARGV[2])
if timeout > 0 then
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', now + timeout),
             'PX', timeout + GRACE_MS)
else
  redis.call('SET', KEYS[1], ARGV[1] .. ':0')
end
return 1
""".replace("GRACE_MS", str(_LOCK_GRACE_MS))
)

_UNLOCK = (
    _LOCK_PRELUDE
    + """
if not cur or holder ~= ARGV[1] then return 'not_held' end
if not live then return 'expired' end
redis.call('DEL', KEYS[1])
return 'released'
"""
)

_LOCK_HOLDER = (
    _LOCK_PRELUDE
    + """
if live then return holder end
return false
"""
)


def _ms(seconds: float | None) -> int:
    """Seconds -> whole milliseconds, at least 1 for a positive time; None/<=0 -> 0 (never)."""
    if seconds is None or not seconds > 0:
        return 0
    if math.isinf(seconds):
        return 0
    return max(1, round(seconds * 1000))


class RedisStorage:
    """The `Storage` protocol on `redis.asyncio` (hiredis parser when installed).

    `options` go to `redis.asyncio.Redis.from_url` (e.g. `socket_timeout`, `max_connections`).
    Every method costs a small fixed number of round trips per call, not per job.
    """

    kind = "redis"
    durable = True

    def __init__(self, url: str = DEFAULT_REDIS_URL, prefix: str = "jr", **options: Any) -> None:
        self.keys = Keys(prefix)
        self.prefix = prefix
        self._where = redact_url(url)
        options["decode_responses"] = True
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("socket_timeout", 10.0)
        # A few quick retries ride out a blip; after that callers get StorageUnavailable fast.
        options.setdefault("retry", Retry(EqualJitterBackoff(cap=0.5, base=0.02), 3))
        try:
            self._redis: aredis.Redis[str] = aredis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"invalid redis_url {self._where!r}: {exc}") from exc
        self._save = self._redis.register_script(_SAVE)
        self._load_many = self._redis.register_script(_LOAD_MANY)
        self._claim = self._redis.register_script(_CLAIM)
        self._queue_save = self._redis.register_script(_QUEUE_SAVE)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._lock = self._redis.register_script(_LOCK)
        self._unlock = self._redis.register_script(_UNLOCK)
        self._lock_holder = self._redis.register_script(_LOCK_HOLDER)
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisStorage {self._where} prefix={self.prefix!r}>"

    def _errors(self, operation: str) -> contextlib.AbstractContextManager[None]:
        return redis_errors(operation, self._where)

    # --- jobs held by a node ------------------------------------------------------------------

    async def save_many(self, node: str, jobs: Sequence[JobRecord]) -> None:
        if not jobs:
            return
        # One script call per 1000 jobs, one msgpack argument per job: redis-py's Python
        # per-argument packing, not Redis, was the cost of pipelined HSETs (40 -> 14 us/job).
        packed = [_pack_job(job) for job in jobs]
        keys = [self.keys.index(node), self.keys.nodes]
        with self._errors("save_many"):
            for start in range(0, len(jobs), _CHUNK):
                chunk = jobs[start : start + _CHUNK]
                job_keys = [self.keys.job(node, job.id) for job in chunk]
                await self._save(keys=keys + job_keys, args=[node, *packed[start : start + _CHUNK]])

    async def destroy_many(self, node: str, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        with self._errors("destroy_many"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*[self.keys.job(node, job_id) for job_id in job_ids])
                pipe.srem(self.keys.index(node), *job_ids)
                await pipe.execute()

    async def load(self, node: str, job_id: str) -> JobRecord | None:
        key = self.keys.job(node, job_id)
        with self._errors("load"):
            raw = await self._redis.hgetall(key)
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
                flats: list[list[str]] = await self._load_many(keys=keys)
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
        seen: set[str] = set()
        cursor = 0
        while True:
            cursor, ids = await self._redis.sscan(self.keys.index(node), cursor, count=_CHUNK)
            page = [job_id for job_id in ids if job_id not in seen]  # SSCAN may repeat
            seen.update(page)
            if page:
                yield page
            if cursor == 0:
                return

    async def nodes(self) -> list[str]:
        with self._errors("nodes"):
            names = sorted(await self._redis.smembers(self.keys.nodes))
            if not names:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
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
            keys = [index, self.keys.claim(f"{token}:{start}")]
            keys += [self.keys.job(from_node, job_id) for job_id in chunk]
            with self._errors("claim"):
                # Atomic per chunk; the answer is logged under a fresh token so a retry after
                # a lost reply returns the same jobs instead of losing them.
                reply: list[Any] = await self._claim(keys=keys, args=chunk)
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
        keys = list(self.keys.queue(queue))
        args: list[str] = []
        for job in jobs:
            args += (job.id, _record_json(job))
        with self._errors("queue_save"):
            for start in range(0, len(args), 2 * _CHUNK):
                await self._queue_save(keys=keys, args=args[start : start + 2 * _CHUNK])

    async def queue_remove(self, queue: str, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        jobs_key, order_key, _ = self.keys.queue(queue)
        with self._errors("queue_remove"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(jobs_key, *job_ids)
                pipe.zrem(order_key, *job_ids)
                await pipe.execute()

    async def queue_load(self, queue: str) -> list[JobRecord]:
        jobs_key, order_key, _ = self.keys.queue(queue)
        out: list[JobRecord] = []
        low = "-inf"
        with self._errors("queue_load"):
            while True:
                page = await self._redis.zrangebyscore(
                    order_key, low, "+inf", start=0, num=_CHUNK, withscores=True
                )
                if not page:
                    return out
                ids = [job_id for job_id, _ in page]
                for job_id, text in zip(ids, await self._redis.hmget(jobs_key, ids), strict=True):
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
            taken = await self._acquire(keys=[self.keys.uniq(key)], args=[owner, _ms(ttl_s)])
        return bool(taken)

    async def release(self, key: str, owner: str) -> bool:
        with self._errors("release"):
            return bool(await self._release(keys=[self.keys.uniq(key)], args=[owner]))

    async def holder(self, key: str) -> str | None:
        with self._errors("holder"):
            holder: str | None = await self._redis.get(self.keys.uniq(key))
            return holder

    # --- locks with expiry --------------------------------------------------------------------

    async def lock(self, key: str, token: str, timeout_s: float | None) -> bool:
        with self._errors("lock"):
            taken = await self._lock(keys=[self.keys.lock(key)], args=[token, _ms(timeout_s)])
        return bool(taken)

    async def unlock(self, key: str, token: str) -> UnlockResult:
        with self._errors("unlock"):
            result = await self._unlock(keys=[self.keys.lock(key)], args=[token])
        if result == "released":
            return "released"
        if result == "expired":
            return "expired"
        return "not_held"

    async def lock_holder(self, key: str) -> str | None:
        with self._errors("lock_holder"):
            holder: str | None = await self._lock_holder(keys=[self.keys.lock(key)])
        return holder

    async def force_unlock(self, key: str) -> bool:
        with self._errors("force_unlock"):
            return bool(await self._redis.delete(self.keys.lock(key)))

    # --- wake-up commands (pub/sub) ---------------------------------------------------------------

    async def send_command(self, node: str, job_id: str) -> int:
        """Ask `node` to (re)schedule `job_id` from storage; returns how many subscribers got it.

        Pub/sub is at most once: 0 means no node listens now. The job must already be in
        storage in the state wanted, so a node that was away still finds it when it resumes.
        """
        with self._errors("send_command"):
            receivers: int = await self._redis.publish(self.keys.commands(node), job_id)
        return receivers

    async def commands(self, node: str, *, resync: bool = False) -> AsyncGenerator[str, None]:
        """Job ids published for `node` (by `send_command`), as they come; no polling.

        Runs until the consumer stops iterating (`aclose`) or is cancelled. If Redis goes
        away it resubscribes by itself, with a backoff from 50 ms doubling up to 2 s, logging
        at warning; it never raises anything but CancelledError. Commands sent while it was
        away are lost; with `resync=True` it yields `RESYNC` ("", never a job id) after each
        resubscription, so the caller can look at storage for jobs it missed.
        """
        channel = self.keys.commands(node)
        delay = _COMMANDS_BACKOFF_MIN_S
        subscribed_before = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                async with contextlib.aclosing(_listen(pubsub)) as events:
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
            except (redis.exceptions.RedisError, OSError) as exc:
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
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _COMMANDS_BACKOFF_MAX_S)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._errors("aclose"):
            await self._redis.aclose()


async def _listen(pubsub: Any) -> AsyncGenerator[str | None, None]:
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
        if kind == "message" and isinstance(data, str) and data:
            yield data
        elif kind == "subscribe":
            yield None


def _pack_job(job: JobRecord) -> bytes:
    try:
        fields = encode_job(job)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"job {job.id} ({job.name}) can't be stored: {exc}") from exc
    flat = [job.id]
    for item in fields.items():
        flat += item
    packed: bytes = msgpack.packb(flat)
    return packed


def _record_json(job: JobRecord) -> str:
    try:
        return dump_json(job.to_dict())  # extras included; from_dict files them back
    except (TypeError, ValueError) as exc:
        raise StorageError(f"job {job.id} ({job.name}) can't be stored: {exc}") from exc
