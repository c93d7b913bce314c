"""A node with no distributor after `warn_no_node_after` seconds says so, once (a loud mistake).

A node started in the wrong discovery group, pointed at another Redis, or at a distributor
address nobody listens on would otherwise wait in silence while the app's jobs pile up. One
loop timer at start; nothing runs after it fired or the node stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from jobreactor.node.link import DistributorLink
from jobreactor.storage.codec import redact_url

logger = logging.getLogger("jobreactor.node")

__all__ = ["warn_if_alone"]


class Lonely(Protocol):
    """What the check reads of a node (node.py's Node)."""

    name: str
    group: str

    @property
    def links(self) -> Sequence[DistributorLink]: ...

    @property
    def stopping(self) -> bool: ...


def warn_if_alone(node: Lonely, after_s: float, discovery_url: str | None) -> asyncio.TimerHandle:
    """Arm the one-shot check; the returned handle may be cancelled (the node stops)."""

    def check() -> None:
        if node.stopping or any(link.is_ready for link in node.links):
            return
        logger.warning("%s", _explain(node, after_s, discovery_url))

    return asyncio.get_running_loop().call_later(after_s, check)


def _explain(node: Lonely, after_s: float, discovery_url: str | None) -> str:
    static = [link.configured for link in node.links if link.configured]
    parts = [f"node {node.name} has no distributor to work for after {after_s:g} s"]
    if discovery_url:
        parts.append(
            f"the registry at {redact_url(discovery_url)} lists no reachable distributor of "
            f"group {node.group!r}: check that the app uses the same JOBREACTOR_DISCOVERY_URL "
            "and JOBREACTOR_GROUP (group names must match exactly)"
        )
    if static:
        parts.append(f"none of {', '.join(static)} answered a handshake: is the app running?")
    return "; ".join(parts)
