"""A registry that can't be forged (issue 18): with write access to the registry's Redis only,
a fake distributor entry (unsigned, signed with another secret, or with a 10-year deadline)
is never dialled."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.signing import entry_signature, registry_key
from tests.conftest import make_test_reactor, noop_registry, wait_until

pytestmark = pytest.mark.timeout(90)


class FakeDistributor:
    """A listener that counts who dials it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.dialled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.dialled += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def fake() -> Iterator[FakeDistributor]:
    listener = FakeDistributor()
    yield listener
    listener.close()


def forge(group: dict[str, Any], port: int, how: str) -> None:
    """What an attacker with Redis write access does: ZADD, HSET, PUBLISH join."""
    client = redis.Redis.from_url(group["discovery_url"], decode_responses=True)
    keys = GroupKeys(group["redis_prefix"], "default")
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000
    deadline = now + (10 * 365 * 86400 * 1000 if how == "far deadline" else 60_000)
    iid = f"fake:1:{how.replace(' ', '')}"
    address = f"127.0.0.1:{port}"
    fields = {"kind": "distributor", "address": address, "deadline": str(deadline)}
    if how == "other secret":
        expires = now + 60_000
        key = registry_key(b"not-ours", "default")
        sig = entry_signature(key, "default", "distributor", iid, address, expires)
        fields.update(expires=str(expires), sig=sig)
    client.zadd(keys.members("distributor"), {iid: deadline})
    client.hset(keys.member(iid), mapping=fields)
    client.publish(keys.events, json.dumps({"event": "join", "iid": iid, "address": address}))
    client.close()


@pytest.mark.parametrize(
    ("secret", "how"),
    [("shh", "unsigned"), ("shh", "other secret"), ("shh", "far deadline"), (None, "far deadline")],
)
def test_a_forged_entry_is_never_dialled(
    group: dict[str, Any], fake: FakeDistributor, secret: str | None, how: str
) -> None:
    reactor = make_test_reactor(**group)
    try:
        reactor.start_distributor("127.0.0.1", 0, secret=secret)
        node = reactor.start_node("w1", registry=noop_registry(), secret=secret)
        wait_until(
            lambda: len(node._node.links) == 1 and node._node.links[0].is_ready, what="a link"
        )
        forge(group, fake.port, how)
        # A second real distributor: once the node works with it, the registry read that
        # found it also read the forged entry (a read takes every entry at once).
        reactor.start_distributor("127.0.0.1", 0, secret=secret)
        wait_until(
            lambda: sum(link.is_ready for link in node._node.links) == 2, what="the 2nd link"
        )
        assert fake.dialled == 0
        assert all(str(fake.port) not in link.configured for link in node._node.links)
    finally:
        reactor.stop(timeout=10)


def test_signed_entries_verify_and_expire() -> None:
    from jobreactor.discovery.signing import entry_is_trusted

    key = registry_key(b"shh", "g")
    sig = entry_signature(key, "g", "distributor", "i", "h:1", 10_000)
    fields = {"address": "h:1", "deadline": "10000", "expires": "10000", "sig": sig}
    assert entry_is_trusted(key, "g", "distributor", "i", fields, 5_000) is None
    assert entry_is_trusted(key, "g", "distributor", "i", fields, 10_001) is not None  # expired
    assert entry_is_trusted(key, "g", "distributor", "i", {**fields, "address": "x:1"}, 5_000)
    assert entry_is_trusted(registry_key(b"x", "g"), "g", "distributor", "i", fields, 5_000)
    assert entry_is_trusted(None, "g", "distributor", "i", fields, 5_000) is None
