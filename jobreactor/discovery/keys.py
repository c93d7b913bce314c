"""Every Redis key and channel of the discovery registry, in one place.

One hash tag per group, `{g:<group>}`, after the configured `redis_prefix`, so a group's
registry lives in one Redis Cluster slot and each Lua script below touches one tag only:

    <prefix>:{g:<group>}:distributors   zset    iid -> deadline (ms, Redis clock) of each member
    <prefix>:{g:<group>}:nodes          zset    the same for nodes
    <prefix>:{g:<group>}:member:<iid>   hash    kind, address, host, pid, started, deadline,
                                                stats (JSON); PEXPIREs with the registration TTL
    <prefix>:{g:<group>}:events         channel join / leave / adopt hints (JSON; at most once)
    <prefix>:{g:<group>}:journals       zset    journal id -> last time its owner beat (ms)
    <prefix>:{g:<group>}:journal:<id>   hash    owner (iid), epoch (fencing), adopting,
                                                released; once adopted and emptied, a
                                                tombstone naming the adopter (with a TTL)

A journal id is the name of the distributor's durable queue in its storage
(`distributor:<address>`, or `distributor:<address>:<iid>` for a second journal at one address).
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Final, Literal

from jobreactor.errors import ConfigError

Kind = Literal["distributor", "node"]
KINDS: Final[tuple[Kind, ...]] = ("distributor", "node")


def new_iid() -> str:
    """`<hostname>:<pid>:<12 hex>`: new per process start (pids repeat across containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def check_group(group: str) -> str:
    if not group or "{" in group or "}" in group or len(group) > 200:
        raise ConfigError(f"group must be 1-200 characters without braces, got {group!r}")
    return group


class GroupKeys:
    """The registry keys of one group (see the module docstring)."""

    def __init__(self, prefix: str, group: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"redis key prefix must be non-empty and brace-free, got {prefix!r}")
        self.group = check_group(group)
        self.base = f"{prefix}:{{g:{group}}}"
        self.events = f"{self.base}:events"
        self.journals = f"{self.base}:journals"

    def members(self, kind: Kind) -> str:
        return f"{self.base}:{kind}s"

    def member(self, iid: str) -> str:
        return f"{self.base}:member:{iid}"

    def journal(self, journal_id: str) -> str:
        return f"{self.base}:journal:{journal_id}"
