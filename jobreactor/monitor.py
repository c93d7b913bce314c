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

from jobreactor.errors import StorageError
from jobreactor.job import JobStatus
from jobreactor.storage import scripts
from jobreactor.storage.codec import decode_fields, is_unfinished, redact_url
from jobreactor.storage.connect import LazySync, is_cluster, redis_errors
from jobreactor.storage.keys import Keys

__all__ = ["RedisMonitor"]

_CHUNK = 1000
Record = dict[str, Any]

# KEYS[1] the job hash; ARGV: run_at_ts, status field value "new", channel, job id, and
# PUBLISH or SPUBLISH (sharded, on a cluster: the channel shares the job's slot).
# Atomic, so a node finishing the job at the same moment can't be overwritten half-way.
# `lease` goes back to its default (absent); last_error, failed_at and run_at stay: history.
_RETRY = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'error' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'attempt', '0', 'run_at_ts', ARGV[1])
redis.call('HDEL', KEYS[1], 'lease')
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
            destroy = self._redis.register_script(scripts.DESTROY)
            for node in found:  # one atomic step per node (each node has its own slot)
                destroy(keys=[self._keys.index(node), self._keys.job(node, job_id)], args=[job_id])
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
                keys = [self._keys.index(node), *[self._keys.job(node, job_id) for job_id in ids]]
                self._redis.register_script(scripts.DESTROY)(keys=keys, args=ids)
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
                    keys=[self._keys.job(node, job_id)],
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

    # --- internals --------------------------------------------------------------------------------

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
