"""Multi-host (issue 13): a distributor and two nodes on three network stacks.

The distributor runs in this process, in the root network namespace, bound to every address
with a secret; each node is a CLI node process in a namespace of its own, reaching the
distributor over its own veth pair (its own addresses, routes and TCP stack), as on separate
machines. A mixed workload (instant, after, period, retries, defer) runs to completion on both.
Where the kernel (or the user) can't make namespaces the test is skipped, saying why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliNode, Recorder, make_test_reactor, wait_until
from tests.netns import hosts, netns_refusal

pytestmark = pytest.mark.timeout(120)

SECRET = "multi-host-secret"
INSTANT, AFTER, DEFERRED, FAILING, PERIOD_RUNS = 40, 20, 20, 4, 3


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_distributor_and_two_nodes_on_three_network_stacks(
    cli_node: Callable[..., CliNode], tmp_path: Path
) -> None:
    refusal = netns_refusal()
    if refusal is not None:
        print(f"multi-host test skipped: {refusal}")
        pytest.skip(f"network namespaces unavailable: {refusal}")
    reactor = make_test_reactor(max_attempt=3)
    try:
        with hosts(2) as (b, c):
            _, port = reactor.start_distributor("0.0.0.0", 0, secret=SECRET)
            for name, host in (("nb", b), ("nc", c)):
                cli_node(name, (host.outer_ip, port), secret=SECRET, wrap=host.exec)
            for name in ("nb", "nc"):
                reactor.wait_for_node(name, timeout=30)
            peers = {node["name"]: str(node["address"]) for node in reactor.nodes()}
            assert peers["nb"].startswith(b.inner_ip)  # really from the namespaces
            assert peers["nc"].startswith(c.inner_ip)
            _run_mixed_workload(reactor, tmp_path / "out.jsonl")
    finally:
        reactor.stop(timeout=15)


def _run_mixed_workload(reactor: Any, out: Path) -> None:
    successes, errors, ticks = Recorder(), Recorder(), Recorder()
    args = {"out": str(out)}
    for i in range(INSTANT):
        reactor.enqueue("simple", {**args, "i": i}, success=successes, error=errors)
    for i in range(AFTER):
        reactor.enqueue("simple", {**args, "i": 1000 + i}, {"after": 0.5}, success=successes)
    for i in range(DEFERRED):
        reactor.enqueue("simple", {**args, "i": 2000 + i}, {"defer": True}, success=successes)
    for i in range(FAILING):  # always raises: three attempts, then one error feedback
        reactor.enqueue("fail", {**args, "i": 3000 + i}, success=successes, error=errors)
    periodic = reactor.enqueue("simple", {**args, "i": 4000}, {"period": 0.2}, success=ticks)
    ticks.wait(PERIOD_RUNS, timeout=30)
    assert reactor.cancel(periodic.id)
    successes.wait(INSTANT + AFTER + DEFERRED, timeout=60)
    errors.wait(FAILING, timeout=60)
    wait_until(lambda: len(lines(out)) >= INSTANT + AFTER + DEFERRED + 3 * FAILING, 30)
    ran = lines(out)
    once = [r["i"] for r in ran if r["what"] == "simple" and r["i"] < 3000]
    assert sorted(once) == sorted(
        [*range(INSTANT), *range(1000, 1000 + AFTER), *range(2000, 2000 + DEFERRED)]
    )  # each exactly once
    attempts = [r["i"] for r in ran if r["what"] == "fail"]
    assert sorted(attempts) == sorted([3000 + i for i in range(FAILING) for _ in range(3)])
    assert {r["node"] for r in ran} == {"nb", "nc"}  # both hosts did work
    assert len(successes) == INSTANT + AFTER + DEFERRED
    assert len(errors) == FAILING
