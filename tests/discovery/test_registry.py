"""Registration, expiry and leave, read back with `live_members` (real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aredis

from jobreactor import Registry
from jobreactor.discovery import live_members
from tests.conftest import make_test_reactor, wait_until

pytestmark = pytest.mark.timeout(60)


def members(url: str, prefix: str, kind: str = "distributor", group: str = "default") -> list[Any]:
    async def read() -> list[Any]:
        client = aredis.Redis.from_url(url, decode_responses=True)
        try:
            return await live_members(client, group, prefix=prefix, kind=kind)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_distributor_registers_with_stats_and_leaves_on_stop(group: dict[str, Any]) -> None:
    reactor = make_test_reactor(**group)
    try:
        _, port = reactor.start_distributor("127.0.0.1", 0)
        (member,) = members(group["discovery_url"], group["redis_prefix"])
        assert member.address == f"127.0.0.1:{port}"
        assert member.iid == reactor.distributor.iid
        assert member.stats["pending"] == 0
        assert member.stats["group"] == "default"
        assert member.iid.count(":") == 2
    finally:
        reactor.stop(timeout=5)
    assert members(group["discovery_url"], group["redis_prefix"]) == []


def test_node_finds_distributor_by_group_only(group: dict[str, Any]) -> None:
    reactor = make_test_reactor(**group)
    try:
        reactor.start_distributor("127.0.0.1", 0, group="shop")
        registry = Registry()
        registry.job("simple")(lambda args: None)
        node = reactor.start_node("w1", "memory", None, registry=registry, group="shop")
        wait_until(lambda: bool(reactor.nodes()), timeout=10, what="the node to join")
        assert reactor.enqueue("simple", {}).result(10) == {}  # type: ignore[union-attr]
        (entry,) = members(group["discovery_url"], group["redis_prefix"], "node", "shop")
        assert entry.stats["name"] == "w1"
        assert entry.address == "w1"
        assert node._node.discovered is not None
    finally:
        reactor.stop(timeout=5)
