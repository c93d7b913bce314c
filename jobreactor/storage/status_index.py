"""Per-node indexes of failed and retrying jobs, so a dashboard pages them without a scan.

Two sorted sets per node, in the node's hash tag (so the scripts touching a node's jobs touch
them atomically, on a cluster too):

    {<p>:n:<node>}:failed     zset   ids of jobs with status `failed`, scored by `failed_at`
    {<p>:n:<node>}:retrying   zset   ids of jobs with status `error` (a retry is due), scored
                                     by `run_at_ts` (the next attempt)

They are maintained where a record's status is written: `SAVE_INDEXED` (every save),
`DESTROY_INDEXED` (every delete), `CLAIM_INDEXED` (a claim takes jobs away: recovery, JR.retry),
and the monitor's retry. A store written before the index existed is indexed by
`jobreactor jobs reindex` (`RedisMonitor.reindex`), which is idempotent. Memory storage keeps
the same two indexes in dicts (`MemoryIndex`).

`index_code(job)` is what the save script gets per job: "f<score>", "e<score>" or "" (neither:
remove the id from both, which costs nothing while the node has no such jobs).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal, Protocol, runtime_checkable

from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage.scripts import CLAIM_LOG_MS

IndexKind = Literal["failed", "retrying"]
# Looked up once: an Enum member's attribute access costs more than the comparison.
_FAILED: Final = JobStatus.FAILED
_ERROR: Final = JobStatus.ERROR
_NEW: Final = JobStatus.NEW
KINDS: Final[tuple[IndexKind, ...]] = ("failed", "retrying")


def index_key(node_tag: str, kind: IndexKind) -> str:
    return f"{node_tag}:{kind}"


def index_code(status: str, failed_at: float | None, run_at_ts: float) -> str:
    if status == _FAILED:
        return f"f{float(failed_at or 0.0)!r}"
    if status == _ERROR:
        return f"e{float(run_at_ts or 0.0)!r}"
    return ""


def code_of(job: JobRecord) -> str:
    return index_code(job.status, job.failed_at, job.run_at_ts)


def is_update_only(job: JobRecord) -> bool:
    """A periodic (or cron) record that has run: saved only while it is still stored. Deleting
    the record is the external way to cancel the job; a run's own save must not undo a delete
    that landed after the run checked for its record (node/guards.py `record_gone`). A new
    record, or a failed one put back after a claim (node/commands.py), is always written."""
    return job.status not in (_NEW, _FAILED) and (job.period > 0 or job.cron is not None)


def save_code(job: JobRecord) -> str:
    """What `SAVE_INDEXED` gets for `job`: its index code, "u"-prefixed if `is_update_only`."""
    code = index_code(job.status, job.failed_at, job.run_at_ts)
    return "u" + code if is_update_only(job) else code


# KEYS[1] index set, KEYS[2] failed zset, KEYS[3] retrying zset, KEYS[4..] job hashes;
# ARGV[1..n] msgpack [id, field1, value1, ...] for KEYS[i + 3], ARGV[n+1..2n] index codes
# (`save_code`). Atomic: a job is never seen half-written, nor between its DEL and HSET by a
# claim. DEL first, so fields that went back to None/default don't linger. A code prefixed
# "u" (an update of a periodic record) is skipped when the record is gone: it was deleted.
SAVE_INDEXED: Final = """
local n = #KEYS - 3
local hasf = redis.call('EXISTS', KEYS[2]) == 1
local hase = redis.call('EXISTS', KEYS[3]) == 1
local saved = 0
for i = 1, n do
  local code = ARGV[n + i]
  local write = true
  if string.sub(code, 1, 1) == 'u' then
    code = string.sub(code, 2)
    write = redis.call('EXISTS', KEYS[i + 3]) == 1
  end
  if write then
    saved = saved + 1
    local flat = cmsgpack.unpack(ARGV[i])
    local id = flat[1]
    redis.call('DEL', KEYS[i + 3])
    redis.call('HSET', KEYS[i + 3], unpack(flat, 2))
    redis.call('SADD', KEYS[1], id)
    local kind = string.sub(code, 1, 1)
    if kind == 'f' then
      redis.call('ZADD', KEYS[2], string.sub(code, 2), id)
      hasf = true
      if hase then redis.call('ZREM', KEYS[3], id) end
    elseif kind == 'e' then
      redis.call('ZADD', KEYS[3], string.sub(code, 2), id)
      hase = true
      if hasf then redis.call('ZREM', KEYS[2], id) end
    else
      if hasf then redis.call('ZREM', KEYS[2], id) end
      if hase then redis.call('ZREM', KEYS[3], id) end
    end
  end
end
return saved
"""

# KEYS[1] index set, KEYS[2] failed zset, KEYS[3] retrying zset, KEYS[4..] job hashes;
# ARGV the ids.
DESTROY_INDEXED: Final = """
redis.call('DEL', unpack(KEYS, 4))
redis.call('SREM', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
redis.call('ZREM', KEYS[3], unpack(ARGV))
return 1
"""

# KEYS[1] index set, KEYS[2] claim log, KEYS[3] failed zset, KEYS[4] retrying zset,
# KEYS[5..] job hashes; ARGV: the ids, same order. The claim log makes a retried claim
# return what the first one took.
CLAIM_INDEXED: Final = """
local done = redis.call('GET', KEYS[2])
if done then return cmsgpack.unpack(done) end
local out = {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = redis.call('HGETALL', KEYS[i + 4])
    redis.call('DEL', KEYS[i + 4])
    redis.call('ZREM', KEYS[3], ARGV[i])
    redis.call('ZREM', KEYS[4], ARGV[i])
  end
end
redis.call('SET', KEYS[2], cmsgpack.pack(out), 'PX', ARGV_LOG_MS)
return out
""".replace("ARGV_LOG_MS", str(CLAIM_LOG_MS))

# KEYS[1] index set, KEYS[2] failed zset, KEYS[3] retrying zset; ARGV: id, code pairs.
# Rebuild: (re)index jobs still in the node's index set, drop entries of jobs gone.
REINDEX: Final = """
for i = 1, #ARGV, 2 do
  local id, code = ARGV[i], ARGV[i + 1]
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if redis.call('SISMEMBER', KEYS[1], id) == 1 then
    local kind = string.sub(code, 1, 1)
    if kind == 'f' then redis.call('ZADD', KEYS[2], string.sub(code, 2), id) end
    if kind == 'e' then redis.call('ZADD', KEYS[3], string.sub(code, 2), id) end
  end
end
return 1
"""


# KEYS[1] index set, KEYS[2] a status zset; ARGV ids found in the zset: drop those not stored.
PRUNE: Final = """
local n = 0
for i = 1, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    n = n + redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return n
"""

SCRIPTS: Final = {
    "SAVE_INDEXED": SAVE_INDEXED,
    "DESTROY_INDEXED": DESTROY_INDEXED,
    "CLAIM_INDEXED": CLAIM_INDEXED,
    "REINDEX": REINDEX,
}


@runtime_checkable
class StatusIndexReader(Protocol):
    """What a storage with status indexes answers (Redis and memory storage both do)."""

    async def index_count(self, node: str, kind: IndexKind) -> int: ...

    async def index_page(
        self, node: str, kind: IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]:
        """(id, score) pairs, newest failure first / soonest retry first."""
        ...


class MemoryIndex:
    """The two indexes of MemoryStorage: node -> {id: score}, kept in step with saves."""

    def __init__(self) -> None:
        self.by_kind: dict[IndexKind, dict[str, dict[str, float]]] = {k: {} for k in KINDS}
        self._any = False

    def saved(self, node: str, jobs: Iterable[JobRecord]) -> None:
        failed, retrying = self.by_kind["failed"], self.by_kind["retrying"]
        for job in jobs:
            status = job.status
            if status == _FAILED:
                failed.setdefault(node, {})[job.id] = float(job.failed_at or 0.0)
                retrying.get(node, {}).pop(job.id, None)
                self._any = True
            elif status == _ERROR:
                retrying.setdefault(node, {})[job.id] = float(job.run_at_ts or 0.0)
                failed.get(node, {}).pop(job.id, None)
                self._any = True
            elif self._any:
                failed_here, retrying_here = failed.get(node), retrying.get(node)
                if failed_here:
                    failed_here.pop(job.id, None)
                if retrying_here:
                    retrying_here.pop(job.id, None)

    def note(self, node: str, job: JobRecord) -> None:
        """One record's status changed in place (a node's write-behind-free memory storage):
        the hot path, so a job that was never failed or retrying costs two comparisons."""
        status = job.status
        if self._any or status in (_FAILED, _ERROR):
            self.saved(node, (job,))

    def removed(self, node: str, job_ids: Iterable[str]) -> None:
        if not self._any:
            return
        tables = [t for t in (self.by_kind[k].get(node) for k in KINDS) if t]
        if not tables:
            return
        for job_id in job_ids:
            for table in tables:
                table.pop(job_id, None)

    def count(self, node: str, kind: IndexKind) -> int:
        return len(self.by_kind[kind].get(node, {}))

    def page(self, node: str, kind: IndexKind, start: int, count: int) -> list[tuple[str, float]]:
        table = self.by_kind[kind].get(node, {})
        items = list(table.items())
        if kind == "failed":
            best = heapq.nlargest(start + count, items, key=lambda item: item[1])
        else:
            best = heapq.nsmallest(start + count, items, key=lambda item: item[1])
        return best[start:]


def merge_pages(
    pages: Mapping[str, Sequence[tuple[str, float]]], kind: IndexKind, start: int, count: int
) -> list[tuple[str, str, float]]:
    """(node, id, score) of one page over several nodes' pages (each already holding the top
    `start + count` of its node), in the index's order."""
    rows = [(node, job_id, score) for node, page in pages.items() for job_id, score in page]
    rows.sort(key=lambda row: (-row[2] if kind == "failed" else row[2], row[0], row[1]))
    return rows[start : start + count]
