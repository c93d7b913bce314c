"""A real partition (issue 10): the node runs in its own network namespace, joined to the
distributor's by a veth pair; `ip link set ... down` cuts the link, `up` heals it. Needs root
and a kernel that allows network namespaces: where they are refused, the test is skipped and
says why (checked at run time); namespaces are always removed afterwards."""

from __future__ import annotations

import collections
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Registry
from tests.conftest import Recorder, in_flight, make_test_reactor, wait_until
from tests.netns import Host, ip, netns_refusal

pytestmark = pytest.mark.timeout(120)


class Link(Host):
    """The root namespace (distributor) <-> namespace `ns` (node), over veth `outer`/`inner`."""

    def __init__(self) -> None:
        super().__init__(index=0)

    def cut(self) -> None:
        ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        ip("link", "set", self.outer, "up")


@pytest.fixture
def link() -> Iterator[Link]:
    refused = netns_refusal()
    if refused is not None:
        print(f"SKIP test_netns: {refused}")
        pytest.skip(refused)
    made = Link()
    try:
        made.create()
    except subprocess.CalledProcessError as exc:
        made.remove()
        reason = f"the kernel or permissions refuse network namespaces: {exc.stderr.strip()}"
        print(f"SKIP test_netns: {reason}")
        pytest.skip(reason)
    try:
        yield made
    finally:
        made.remove()


def test_a_node_in_another_namespace_cut_by_link_down_loses_nothing_and_feeds_back_once(
    link: Link, cli_node: Any, tmp_path: Path
) -> None:
    reactor = make_test_reactor(heartbeat_interval=0.3, handshake_timeout=1.0)
    try:
        # A non-loopback bind: secure by default wants a secret.
        _, port = reactor.start_distributor("0.0.0.0", 0, secret="netns-secret")
        old = cli_node(
            "old",
            (link.outer_ip, port),
            wrap=("ip", "netns", "exec", link.ns),
            secret="netns-secret",
            heartbeat_interval=0.3,
            handshake_timeout=1.0,
            concurrency=10,
        )
        reactor.wait_for_node("old", timeout=20)
        out = tmp_path / "out.jsonl"
        finals = Recorder()
        handles = [
            reactor.enqueue("span", {"out": str(out), "i": i, "s": 0.5}, success=finals)
            for i in range(60)
        ]
        wait_until(lambda: in_flight(reactor, "old") == 60, timeout=10, what="60 jobs on old")
        at_cut = in_flight(reactor, "old")
        link.cut()
        wait_until(lambda: in_flight(reactor, "old") == -1, timeout=10, what="the cut noticed")
        ran = Recorder()
        registry = Registry()
        registry.job("span")(lambda args: ran(args["i"]))
        reactor.start_node(
            "new", distributors=[("127.0.0.1", port)], registry=registry, secret="netns-secret"
        )
        for handle in handles:
            assert handle is not None
            handle.result(timeout=30)
        link.heal()
        reactor.wait_for_node("old", timeout=30)
        old.stop()
        finals.wait(60, timeout=5)
        assert len(finals.items) == 60, "final feedback exactly once per job"
        on_old = (
            [json.loads(line)["i"] for line in out.read_text().splitlines()] if out.exists() else []
        )
        per_job = collections.Counter([*on_old, *ran.items])
        assert set(per_job) == set(range(60))
        assert sum(n - 1 for n in per_job.values()) <= at_cut
    finally:
        reactor.stop(timeout=10)
