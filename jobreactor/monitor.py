"""RedisMonitor: a synchronous look into Redis storage, for consoles and apps.

It reads and deletes the records RedisStorage writes, addressed by job id (not by Redis key,
as the Ruby one was), through the per-node index sets: never `KEYS`, and node "node" never sees
node "redis_node"'s jobs.

    >>> from jobreactor import RedisMonitor
    >>> mon = RedisMonitor("redis://localhost:6379")
    >>> mon.jobs_for("worker1", to_be_retried=True)
    {'5f0c…': {'id': '5f0c…', 'name': 'send_mail', 'args': {...}, 'attempt': 2, ...}}

Records are plain dicts typed like `JobRecord.to_dict()` (ints as ints, args decoded), holding
every field stored; `JobRecord.from_dict(record)` rebuilds the record.

`retry(job_id)` puts a failed job back in its node's hands (delayed_job's retry of a failed
job): reset in place, then a wake-up on the node's commands channel, so no node polls.
`stats()` counts jobs by status per node (`jobreactor jobs stats`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from jobreactor.errors import InvalidOptions, StorageError
from jobreactor.job import JobStatus
from jobreactor.node.control import CONTROL_PREFIX, OPS
from jobreactor.storage import status_index
from jobreactor.storage.codec import decode_fields, is_unfinished, redact_url
from jobreactor.storage.connect import LazySync, is_cluster, redis_errors
from jobreactor.storage.keys import Keys

__all__ = ["RedisMonitor"]

_CHUNK = 1000
Record = dict[str, Any]

# KEYS[1] the job hash, KEYS[2..3] the node's failed and retrying indexes; ARGV: run_at_ts,
# status field value "new", channel, job id, and PUBLISH or SPUBLISH (sharded, on a cluster:
# the channel shares the job's slot).
# Atomic, so a node finishing the job at the same moment can't be overwritten half-way.
# `lease` goes back to its default (absent); last_error, failed_at and run_at stay: history.
_RETRY = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'error' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'attempt', '0', 'run_at_ts', ARGV[1])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call(ARGV[5], ARGV[3], ARGV[4])
return 1
"""


def _configured_url() -> str:
    """The Ruby gem's monitor Redis: `redis_host`/`redis_port` of `JR.config` (README, config)."""
    from jobreactor.reactor import JR

    return f"redis://{JR.config['redis_host']}:{JR.config['redis_port']}"


class RedisMonitor:
    """Sync helper over the job records of every node sharing one Redis and key prefix."""

    def __init__(self, redis_url: str | None = None, prefix: str = "jr", **options: Any) -> None:
        self._url = redis_url or _configured_url()
        self._keys = Keys(prefix)
        self._where = redact_url(self._url)
        options["decode_responses"] = True
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("socket_timeout", 10.0)
        # Validates the url now; connects (and detects a cluster) at first use.
        self._conn = LazySync(self._url, **options)
        self._retry: Any = None

    def __repr__(self) -> str:
        return f"<RedisMonitor {self._where} prefix={self._keys.prefix!r}>"

    @property
    def _redis(self) -> Any:
        client = self._conn.get()
        if self._retry is None:
            self._retry = client.register_script(_RETRY)
        return client

    @property
    def storage(self) -> Any:
        """The sync Redis client (the Ruby monitor's `storage`): `redis.Redis`, or
        `redis.cluster.RedisCluster` on a cluster."""
        return self._redis

    def nodes(self) -> list[str]:
        """Names of the nodes that have stored jobs, sorted."""
        with redis_errors("nodes", self._where):
            names = sorted(self._redis.smembers(self._keys.nodes))
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.scard(self._keys.index(name))
            sizes = pipe.execute() if names else []
        return [name for name, size in zip(names, sizes, strict=True) if size]

    def jobs_for(self, node: str, to_be_retried: bool = False) -> dict[str, dict[str, Any]]:
        """`{job_id: record}` of `node`; with `to_be_retried`, only jobs not complete, cancelled
        or failed: the ones the node resumes when it starts again (`retry_jobs_at_start`)."""
        out: dict[str, dict[str, Any]] = {}
        with redis_errors("jobs_for", self._where):
            for ids in self._pages(node):
                pipe = self._redis.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hgetall(self._keys.job(node, job_id))
                for job_id, raw in zip(ids, pipe.execute(), strict=True):
                    if raw and (not to_be_retried or is_unfinished(raw.get("status"))):
                        out[job_id] = self._decode(node, job_id, raw)
        return out

    def count(self, node: str | None = None) -> int:
        """Jobs stored for `node` (or every node): SCARD of the index sets, O(1) each."""
        names = [node] if node else self.nodes()
        with redis_errors("count", self._where):
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.scard(self._keys.index(name))
            return sum(int(size) for size in pipe.execute()) if names else 0

    def load(self, job_id: str) -> dict[str, Any] | None:
        """The record of `job_id`, whichever node stores it, or None."""
        node = self.node_of(job_id)
        if node is None:
            return None
        with redis_errors("load", self._where):
            raw = self._redis.hgetall(self._keys.job(node, job_id))
        return self._decode(node, job_id, raw) if raw else None

    def node_of(self, job_id: str) -> str | None:
        """The node whose index holds `job_id` (ids are unique across nodes)."""
        found = self._holders(job_id)
        return found[0] if found else None

    def destroy(self, job_id: str) -> bool:
        """Delete the job wherever it is stored; True if it was."""
        found = self._holders(job_id)
        if not found:
            return False
        with redis_errors("destroy", self._where):
            destroy = self._redis.register_script(status_index.DESTROY_INDEXED)
            for node in found:  # one atomic step per node (each node has its own slot)
                keys = [self._keys.index(node), *self._zsets(node), self._keys.job(node, job_id)]
                destroy(keys=keys, args=[job_id])
        return True

    def destroy_all_jobs_for(self, node: str) -> int:
        """Delete every job of `node` (only that node's); returns how many there were."""
        count = 0
        with redis_errors("destroy_all_jobs_for", self._where):
            for ids in self._pages(node):
                pipe = self._redis.pipeline(transaction=False)
                for job_id in ids:
                    pipe.exists(self._keys.job(node, job_id))
                count += sum(int(found) for found in pipe.execute())
                keys = [self._keys.index(node), *self._zsets(node)]
                keys += [self._keys.job(node, job_id) for job_id in ids]
                self._redis.register_script(status_index.DESTROY_INDEXED)(keys=keys, args=ids)
        return count

    def retry(self, job_id: str) -> bool:
        """Run a failed job again: True if `job_id` was stored with status failed (or error).

        The record is reset in place (status new, attempt 0, due now, no lease; last_error and
        failed_at stay for history) and its id is published on the node's commands channel:
        a node listening takes it at once, one that is down resumes it when it starts
        (`retry_jobs_at_start`). No feedback is attached: the old ones fired already.
        """
        for node in self._holders(job_id):
            with redis_errors("retry", self._where):
                publish = "SPUBLISH" if is_cluster(self._redis) else "PUBLISH"
                done = self._retry(
                    keys=[self._keys.job(node, job_id), *self._zsets(node)],
                    args=[
                        repr(time.time()),
                        JobStatus.NEW.value,
                        self._keys.commands(node),
                        job_id,
                        publish,
                    ],
                )
            if done:
                return True
        return False

    def control(self, node: str, op: str, who: str = "cli") -> int:
        """Send quiet / resume / drain to `node` on its commands channel (node/control.py);
        how many listeners got it (0: the node is down, or has no Redis storage)."""
        if op not in OPS:
            raise InvalidOptions(f"unknown node op {op!r} (one of {', '.join(OPS)})")
        with redis_errors("control", self._where):
            message = f"{CONTROL_PREFIX}{op}:{who}"
            if is_cluster(self._redis):
                return int(self._redis.spublish(self._keys.commands(node), message))
            return int(self._redis.publish(self._keys.commands(node), message))

    def scan(self, node: str, cursor: int = 0, count: int = _CHUNK) -> tuple[int, list[Record]]:
        """One SSCAN step over `node`'s index: (next cursor, records); cursor 0 means done.

        Records deleted meanwhile are skipped; Redis may return an id twice across steps.
        """
        with redis_errors("scan", self._where):
            cursor, ids = self._redis.sscan(self._keys.index(node), cursor, count=count)
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._keys.job(node, job_id))
            raws = pipe.execute() if ids else []
        records = [
            self._decode(node, job_id, raw) for job_id, raw in zip(ids, raws, strict=True) if raw
        ]
        return int(cursor), records

    def iter_jobs(
        self, node: str | None = None, status: str | None = None, budget: int | None = None
    ) -> Iterator[tuple[str, Record]]:
        """(node, record) of stored jobs, a page at a time (never a whole node in memory).

        `status` filters; `budget` stops after reading that many records, matching or not,
        so a search for a rare status in a huge store stays bounded.
        """
        seen: set[str] = set()
        read = 0
        for name in [node] if node else self.nodes():
            cursor = 0
            while True:
                cursor, records = self.scan(name, cursor)
                for record in records:
                    read += 1
                    if record["id"] in seen:
                        continue
                    seen.add(record["id"])
                    if status is None or record.get("status", JobStatus.NEW.value) == status:
                        yield name, record
                if cursor == 0 or (budget is not None and read >= budget):
                    break
            if budget is not None and read >= budget:
                return

    def stats(self) -> dict[str, dict[str, int]]:
        """`{node: {status: count}}` for every node with stored jobs (statuses sorted)."""
        out: dict[str, dict[str, int]] = {}
        for node in self.nodes():
            counts: dict[str, int] = {}
            with redis_errors("stats", self._where):
                for ids in self._pages(node):
                    pipe = self._redis.pipeline(transaction=False)
                    for job_id in ids:
                        pipe.hget(self._keys.job(node, job_id), "status")
                    for status in pipe.execute():
                        if status is not None:
                            counts[status] = counts.get(status, 0) + 1
            if counts:
                out[node] = dict(sorted(counts.items()))
        return out

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RedisMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- failed and retrying indexes (storage/status_index.py) ----------------------------------

    def index_count(self, node: str, kind: status_index.IndexKind) -> int:
        """How many jobs of `node` failed for good ("failed") or wait for a retry ("retrying")."""
        with redis_errors("index_count", self._where):
            return int(self._redis.zcard(self._zset(node, kind)))

    def index_page(
        self, node: str, kind: status_index.IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]:
        """(id, score) of one page: newest failure first, or soonest retry first."""
        key, stop = self._zset(node, kind), start + count - 1
        with redis_errors("index_page", self._where):
            if kind == "failed":
                rows = self._redis.zrevrange(key, start, stop, withscores=True)
            else:
                rows = self._redis.zrange(key, start, stop, withscores=True)
        return [(str(job_id), float(score)) for job_id, score in rows]

    def load_many(self, node: str, job_ids: list[str]) -> list[Record]:
        """The records of these jobs of `node` (one round trip; those gone are left out)."""
        if not job_ids:
            return []
        with redis_errors("load_many", self._where):
            pipe = self._redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self._keys.job(node, job_id))
            raws = pipe.execute()
        return [
            self._decode(node, job_id, raw)
            for job_id, raw in zip(job_ids, raws, strict=True)
            if raw
        ]

    def reindex(self, node: str | None = None) -> dict[str, dict[str, int]]:
        """Build the failed and retrying indexes from the stored records (a store written
        before they existed; `jobreactor jobs reindex`). Idempotent; safe while nodes run."""
        out: dict[str, dict[str, int]] = {}
        script = self._redis.register_script(status_index.REINDEX)
        for name in [node] if node else self.nodes():
            counts = {"failed": 0, "retrying": 0}
            keys = [self._keys.index(name), *self._zsets(name)]
            with redis_errors("reindex", self._where):
                for ids in self._pages(name):
                    pipe = self._redis.pipeline(transaction=False)
                    for job_id in ids:
                        pipe.hmget(self._keys.job(name, job_id), "status", "failed_at", "run_at_ts")
                    args: list[str] = []
                    for job_id, (status, failed_at, due) in zip(ids, pipe.execute(), strict=True):
                        code = status_index.index_code(
                            status or "", _num(failed_at), _num(due) or 0.0
                        )
                        counts["failed" if code[:1] == "f" else "retrying"] += bool(code)
                        args += (job_id, code)
                    script(keys=keys, args=args)
                self._prune(name)
            out[name] = counts
        return out

    # --- internals --------------------------------------------------------------------------------

    def _prune(self, node: str) -> None:
        """Drop index entries of jobs no longer stored (a crash between two writes)."""
        prune = self._redis.register_script(status_index.PRUNE)
        for key in self._zsets(node):
            ids = [job_id for job_id, _ in self._redis.zscan_iter(key, count=_CHUNK)]
            for start in range(0, len(ids), _CHUNK):
                prune(keys=[self._keys.index(node), key], args=ids[start : start + _CHUNK])

    def _zset(self, node: str, kind: status_index.IndexKind) -> str:
        return status_index.index_key(self._keys.node_tag(node), kind)

    def _zsets(self, node: str) -> list[str]:
        return [self._zset(node, kind) for kind in status_index.KINDS]

    def _holders(self, job_id: str) -> list[str]:
        with redis_errors("load", self._where):
            names = sorted(self._redis.smembers(self._keys.nodes))
            if not names:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.sismember(self._keys.index(name), job_id)
            member = pipe.execute()
        return [name for name, there in zip(names, member, strict=True) if there]

    def _pages(self, node: str) -> Iterator[list[str]]:
        """All ids in the node's index, a page at a time (SSCAN, never SMEMBERS on big sets).

        Collected before the caller deletes anything, so deleting doesn't disturb the scan.
        """
        ids = list(dict.fromkeys(self._redis.sscan_iter(self._keys.index(node), count=_CHUNK)))
        for start in range(0, len(ids), _CHUNK):
            yield ids[start : start + _CHUNK]

    def _decode(self, node: str, job_id: str, raw: dict[str, str]) -> dict[str, Any]:
        try:
            record = decode_fields(raw)
        except ValueError as exc:
            raise StorageError(
                f"stored job {self._keys.job(node, job_id)} is malformed: {exc}"
            ) from exc
        record.setdefault("id", job_id)
        return record


def _num(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
