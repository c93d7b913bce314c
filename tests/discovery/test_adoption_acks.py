"""Adoption leaves nothing waited for: reports acknowledged only once their journal removal is
stored, and adopted jobs a node never received are queued again (issue 9, adoption)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.discovery.journals import JournalClaims
from jobreactor.discovery.keys import GroupKeys
from jobreactor.discovery.registry import connect
from jobreactor.distributor.journal import ASSIGNED
from jobreactor.job import JobRecord
from jobreactor.node.node import Node
from jobreactor.storage import open_storage
from tests.conftest import Recorder, wait_until
from tests.discovery.conftest import Producer
from tests.discovery.test_adoption import adopted_by, adopter

pytestmark = pytest.mark.timeout(120)


def node(reactor: Reactor, runs: Recorder, name: str = "n1") -> Node:
    registry = Registry()

    @registry.job("work")
    async def work(args: dict[str, Any]) -> None:
        await asyncio.sleep(args.get("s", 0.3))
        runs(args["i"])

    return reactor.start_node(name, "memory", registry=registry, concurrency=16)._node


def test_reports_whose_removal_died_with_the_worker_go_to_the_adopter(
    reactors: Callable[..., Reactor], group: dict[str, Any], producers: Callable[..., Producer]
) -> None:
    fed = Recorder()
    live = adopter(reactors, group, fed)
    runs = Recorder()
    node(reactors(**group, prefetch=0), runs)
    count = 12
    # The victim stores its jobs and their assignment to n1 at once, but every journal write
    # that removes a finished job waits 60 s: it dies with its feedbacks fired and no removal
    # stored. Its nodes' reports must not have been acknowledged.
    # test_journal_delay: JOBREACTOR_TEST_JOURNAL_DELAY, read by distributor/journal.py
    victim = producers(group, count, "redis", slow=2, test_journal_delay=60)
    iid = victim.ready()["iid"]
    ids = {f"{victim.proc.pid}-{i}" for i in range(count)}
    wait_until(lambda: bool(victim.lines("enqueued")), timeout=20, what="jobs stored")
    wait_until(
        lambda: len(victim.lines("fed")) == count - 2, timeout=20, what="the fast ones fed there"
    )
    victim.proc.kill()
    victim.proc.wait(10)
    fed_there = {row["i"] for row in victim.lines("fed")}
    wait_until(lambda: adopted_by(live) == [iid], timeout=20, what="adoption")
    wait_until(lambda: {i for _, i in fed.items} == ids, timeout=30, what="every feedback")
    # The node handed the adopter every unacknowledged report: nothing ran twice.
    assert Counter(runs.items) == Counter(ids), runs.items
    assert Counter(i for _, i in fed.items) == Counter(ids)  # once each in the adopter
    assert fed_there == ids - {f"{victim.proc.pid}-{i}" for i in range(2)}
    wait_until(lambda: live.distributor.unfinished() == 0, timeout=10, what="nothing waited for")
    started = time.monotonic()
    live.stop(timeout=20)
    assert time.monotonic() - started < 10  # not the whole shutdown_timeout


def _dead_journal(group: dict[str, Any], jobs: list[JobRecord]) -> str:
    """A journal left by a distributor that never registered (it died): the owner's iid."""
    owner, journal = "dead:1:aaaaaaaaaaaa", "distributor:10.0.0.1:4000"

    async def write() -> None:
        storage = open_storage("redis", group["discovery_url"], prefix=group["redis_prefix"])
        client = connect(group["discovery_url"])
        try:
            await storage.queue_save(journal, jobs)
            claims = JournalClaims(client, GroupKeys(group["redis_prefix"], "default"))
            assert await claims.claim_own(journal, owner) == 1
        finally:
            await client.aclose()
            await storage.aclose()

    asyncio.run(write())
    return owner


def _sent(job_id: str, to: str, lease: int) -> JobRecord:
    """A journaled job recorded as sent to node `to` under `lease`."""
    job = JobRecord(job_id, "work", {"i": job_id, "s": 0.05}, on_success="fed")
    job.distributor, job.lease, job.extra = "10.0.0.1:4000", lease, {ASSIGNED: to}
    return job


def test_an_adopted_job_its_node_never_received_is_queued_again_at_once(
    reactors: Callable[..., Reactor], group: dict[str, Any]
) -> None:
    runs = Recorder()
    node(reactors(**group, prefetch=0), runs)
    # Recorded as out on n1, but its Jobs frame died with the process: n1 never had them.
    owner = _dead_journal(group, [_sent(f"lost-{i}", "n1", 1000 + i) for i in range(3)])
    fed = Recorder()
    # node_grace far beyond the wait below: n1's hand-over (its last Held) settles them.
    live = adopter(reactors, group, fed, node_grace=300.0)
    wait_until(lambda: adopted_by(live) == [owner], timeout=20, what="adoption")
    expected = [f"lost-{i}" for i in range(3)]
    wait_until(lambda: len(fed) == 3, timeout=20, what="the lost jobs to run")
    assert sorted(runs.items) == expected
    assert sorted(i for _, i in fed.items) == expected


def test_adopted_jobs_of_a_node_that_never_comes_back_are_taken_over(
    reactors: Callable[..., Reactor], group: dict[str, Any]
) -> None:
    runs = Recorder()
    node(reactors(**group, prefetch=0), runs)
    owner = _dead_journal(group, [_sent(f"ghost-{i}", "ghost", 2000 + i) for i in range(3)])
    fed = Recorder()
    live = adopter(reactors, group, fed)  # node_grace=3
    wait_until(lambda: adopted_by(live) == [owner], timeout=20, what="adoption")
    expected = [f"ghost-{i}" for i in range(3)]
    wait_until(lambda: len(fed) == 3, timeout=20, what="node_grace, then the jobs run")
    assert sorted(runs.items) == expected
    assert sorted(i for _, i in fed.items) == expected
