"""Every Redis key and channel jobreactor uses, in one place (one hash tag per owner).

Redis Cluster puts a key in the slot of its hash tag (the text between the first `{` and the
next `}`), and a Lua script or MULTI may only touch keys of one slot. So each owner of data has
its own tag, and every script touches the keys of one owner only; different owners spread over
the cluster's slots:

    {<p>:n:<node>}:job:<id>      hash    one job of <node> (codec in storage/redis.py)
    {<p>:n:<node>}:jobs          set     ids of the jobs stored for <node> (its index)
    {<p>:n:<node>}:claim:<tok>   string  the answer to one claim, kept a minute
    {<p>:n:<node>}:commands      channel job ids <node> should (re)schedule (sharded on a cluster)
    {<p>}:nodes                  set     names of the nodes that ever stored jobs (a directory)
    {<p>:q:<queue>}:jobs         hash    id -> JSON record (a distributor's journal)
    {<p>:q:<queue>}:order        zset    ids by sequence number, oldest first
    {<p>:q:<queue>}:seq          string  that sequence
    {<p>:q:<queue>}:withdrawn    zset    ids whose enqueue timed out, by time (a late save of
                                         one is refused; entries are dropped after a day)
    {<p>:u:<key>}                string  owner of a unique key (dj_one, loner), with a TTL
    {<p>:l:<key>}                string  "<token>:<expiry ms>" of a lock
    {<p>:lim:<slot>}:h           zset    a limit's holders (concurrency: lease expiry ms;
                                         rate: start ms), storage/limits.py
    {<p>:lim:<slot>}:w           zset    nodes waiting on that limit (registration expiry ms)

Batches keep the Ruby gem's layout (`[ns:]distributed_jobs:<token>:parts|state`) on a single
server, so Ruby and Python workers share them; on a cluster the gem's keys would sit in two
slots, so there they become `{[ns:]distributed_jobs:<token>}:parts|state`.

The layout before issue 13 put every key under the one tag `{<p>}` (`LegacyKeys`, read by
`jobreactor jobs migrate`).
"""

from __future__ import annotations

from typing import Final

from jobreactor.errors import ConfigError


def check_prefix(prefix: str) -> str:
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"redis key prefix must be non-empty and brace-free, got {prefix!r}")
    return prefix


class Keys:
    """The current layout: one hash tag per node, per journal, per unique key, per lock."""

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self.nodes: Final = f"{{{prefix}}}:nodes"

    def node_tag(self, node: str) -> str:
        return f"{{{self.prefix}:n:{node}}}"

    def job(self, node: str, job_id: str) -> str:
        return f"{self.node_tag(node)}:job:{job_id}"

    def index(self, node: str) -> str:
        return f"{self.node_tag(node)}:jobs"

    def claim(self, node: str, token: str) -> str:
        return f"{self.node_tag(node)}:claim:{token}"

    def commands(self, node: str) -> str:
        """The pub/sub channel of wake-up commands for `node` (in its slot, for SPUBLISH)."""
        return f"{self.node_tag(node)}:commands"

    def queue(self, queue: str) -> tuple[str, str, str]:
        stem = f"{{{self.prefix}:q:{queue}}}"
        return f"{stem}:jobs", f"{stem}:order", f"{stem}:seq"

    def withdrawn(self, queue: str) -> str:
        return f"{{{self.prefix}:q:{queue}}}:withdrawn"

    def uniq(self, key: str) -> str:
        return f"{{{self.prefix}:u:{key}}}"

    def lock(self, key: str) -> str:
        return f"{{{self.prefix}:l:{key}}}"

    def limit(self, slot: str) -> tuple[str, str]:
        """(holders zset, waiters zset) of one limit slot `<job>:<c|r>:<key>` (one tag)."""
        stem = f"{{{self.prefix}:lim:{slot}}}"
        return f"{stem}:h", f"{stem}:w"


class LegacyKeys:
    """The layout written before issue 13: everything under `{<p>}` (one cluster slot)."""

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

    def queue_stem(self) -> str:
        """What the legacy journals' keys start with (migration only)."""
        return f"{self.base}:queue:"

    def uniq_stem(self) -> str:
        return f"{self.base}:uniq:"

    def lock_stem(self) -> str:
        return f"{self.base}:lock:"


def batch_keys(namespace: str | None, token: str, *, cluster: bool) -> tuple[str, str, str]:
    """(the gem's `redis_key`, its parts set, its state hash) for one batch."""
    key = f"{namespace}:distributed_jobs:{token}" if namespace else f"distributed_jobs:{token}"
    stem = f"{{{key}}}" if cluster else key
    return key, f"{stem}:parts", f"{stem}:state"
