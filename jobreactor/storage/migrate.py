"""`jobreactor jobs migrate`: move data written with the single-tag layout to the per-owner one.

Before issue 13 every key carried the one hash tag `{<prefix>}` (`LegacyKeys`); now each node,
journal, unique key and lock has its own (`Keys`). Run it once, with the nodes and
distributors of that prefix stopped, after upgrading: it copies each owner's keys to the new
names (each copy one MULTI in the new slot) and then deletes the old ones, a page at a time.
It is idempotent: run it again after an interruption and it finishes the job. Claim logs (kept
a minute) and the `nodes` directory (same name in both layouts) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from jobreactor.storage.keys import Keys, LegacyKeys

_PAGE: Final = 1000


@dataclass
class Migrated:
    jobs: int = 0
    journals: int = 0
    unique_keys: int = 0
    locks: int = 0


def migrate(client: Any, prefix: str) -> Migrated:
    """Move every legacy key of `prefix` (sync client: `redis.Redis` or `RedisCluster`)."""
    old, new = LegacyKeys(prefix), Keys(prefix)
    done = Migrated()
    for node in sorted(client.smembers(old.nodes)):
        done.jobs += _node(client, old, new, node)
    stem = old.queue_stem()
    for key in list(client.scan_iter(match=_glob(stem) + "*:jobs", count=_PAGE)):
        queue = key[len(stem) : -len(":jobs")]
        _journal(client, old, new, queue)
        done.journals += 1
    done.unique_keys = _strings(client, old.uniq_stem(), new.uniq)
    done.locks = _strings(client, old.lock_stem(), new.lock)
    return done


def _node(client: Any, old: LegacyKeys, new: Keys, node: str) -> int:
    ids = list(dict.fromkeys(client.sscan_iter(old.index(node), count=_PAGE)))
    for start in range(0, len(ids), _PAGE):
        page = ids[start : start + _PAGE]
        read = client.pipeline(transaction=False)
        for job_id in page:
            read.hgetall(old.job(node, job_id))
        records = read.execute()
        write = client.pipeline(transaction=True)  # all in the node's new slot
        for job_id, record in zip(page, records, strict=True):
            if record:
                write.delete(new.job(node, job_id))
                write.hset(new.job(node, job_id), mapping=record)
                write.sadd(new.index(node), job_id)
        write.execute()
        drop = client.pipeline(transaction=True)  # all in the legacy slot
        drop.delete(*[old.job(node, job_id) for job_id in page])
        drop.srem(old.index(node), *page)
        drop.execute()
    return len(ids)


def _journal(client: Any, old: LegacyKeys, new: Keys, queue: str) -> None:
    old_jobs, old_order, old_seq = old.queue(queue)
    records = client.hgetall(old_jobs)
    order = client.zrange(old_order, 0, -1, withscores=True)
    seq = client.get(old_seq)
    jobs_key, order_key, seq_key = new.queue(queue)
    write = client.pipeline(transaction=True)
    if records:
        write.hset(jobs_key, mapping=records)
    if order:
        write.zadd(order_key, dict(order))
    if seq is not None:
        write.set(seq_key, seq)
    write.execute()
    drop = client.pipeline(transaction=True)
    drop.delete(old_jobs, old_order, old_seq)
    drop.execute()


def _glob(text: str) -> str:
    """`text` matched literally by a SCAN pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _strings(client: Any, stem: str, rename: Any) -> int:
    """Copy the string keys `<stem><name>` (value and remaining TTL) to `rename(name)`."""
    count = 0
    for key in list(client.scan_iter(match=_glob(stem) + "*", count=_PAGE)):
        value, ttl_ms = client.get(key), client.pttl(key)
        if value is None:
            continue
        name = key[len(stem) :]
        if ttl_ms > 0:
            client.set(rename(name), value, px=ttl_ms)
        else:
            client.set(rename(name), value)
        client.delete(key)
        count += 1
    return count
