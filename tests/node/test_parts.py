"""Node parts on their own, through their interfaces: no node, no socket, no loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobreactor.errors import JobReactorError, JobStepError, NodeOpError
from jobreactor.job import JobRecord
from jobreactor.node.control import Intake, NodeControl
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.runner import run_sync
from jobreactor.storage import MemoryStorage
from jobreactor.storage.memory import Keyspace


class Link:
    """An Outlet (node/held.py): what the job parts see of a link."""

    configured = address = "127.0.0.1:1"
    instance = "i1"
    is_ready = True

    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []
        self.credits = 0

    def report(
        self,
        job_id: str,
        lease: int,
        outcome: str,
        final: bool,
        args: dict[str, Any],
        completes_batch: str = "",
    ) -> None:
        self.reports.append((job_id, outcome))

    def grant(self, credits: int = 1) -> None:
        self.credits += credits


def control() -> tuple[NodeControl, Intake, list[str]]:
    calls: list[str] = []
    intake = Intake()

    async def stop() -> None:
        calls.append("stop")

    ctl = NodeControl(
        "w1",
        intake,
        pause=lambda: calls.append("pause"),
        resume=lambda: calls.append("resume"),
        stop=stop,
        retry_now=lambda job_id: job_id == "known",
    )
    return ctl, intake, calls


def test_node_ops_move_the_intake_and_refuse_with_a_typed_error() -> None:
    ctl, intake, calls = control()
    assert ctl.apply("quiet") == "quiet"
    assert (intake.quiet, intake.shut) == (True, True)
    assert ctl.apply("resume") == "running"
    assert (intake.quiet, intake.shut) == (False, False)
    assert calls == ["pause", "resume"]
    with pytest.raises(NodeOpError, match="unknown node op") as raised:
        ctl.apply("explode")
    assert isinstance(raised.value, ValueError)  # what callers caught before
    assert isinstance(raised.value, JobReactorError)
    ctl.stop_hook = lambda: calls.append("hook")
    assert ctl.apply("drain") == "draining"
    assert calls[-1] == "hook"
    with pytest.raises(NodeOpError, match="can't resume"):
        ctl.apply("resume")
    assert ctl.retry_now("known")
    assert not ctl.retry_now("unknown")


def test_closing_the_intake_shuts_credit_whatever_the_operator_says() -> None:
    ctl, intake, _ = control()
    intake.set(closed=True)
    ctl.apply("quiet")
    ctl.apply("resume")
    assert intake.shut


def test_a_plain_step_that_returns_an_awaitable_fails_with_a_typed_error() -> None:
    async def body() -> None:
        return None

    raised = run_sync([lambda args: body()], {})
    assert isinstance(raised, JobStepError)
    assert isinstance(raised, TypeError)
    assert "declare it `async def`" in str(raised)


def test_holdings_pack_a_far_job_and_find_it_by_id() -> None:
    storage = MemoryStorage(Keyspace())
    holdings = Holdings("w1", storage)
    link = Link()
    record = JobRecord("j1", "later", {"x": 1}, distributor=link.configured, lease=7)
    held = HeldJob(record, link, origin="i1")
    holdings.jobs["j1"] = held
    assert holdings.pack(held, 1000.0)
    assert "j1" not in holdings.jobs
    assert len(holdings) == 1
    assert holdings.holds("j1")
    assert holdings.packed_held_from(link) == [("j1", 7)]
    peeked = holdings.peek_record("j1")
    assert peeked is not None
    assert peeked.args == {"x": 1}
    assert "j1" not in holdings.jobs  # peeking leaves it packed
    found = holdings.find("j1")  # unpacked, still scheduled at its due time
    assert found is not None
    assert (found.link, found.origin, found.record.args) == (link, "i1", {"x": 1})
    assert holdings.timers.next_deadline() == 1000.0
    assert len(holdings) == 1


def test_a_job_in_flight_is_never_packed() -> None:
    holdings = Holdings("w1", MemoryStorage(Keyspace()))
    held = HeldJob(JobRecord("j1", "later", {}), Link(), holds_credit=True)
    holdings.jobs["j1"] = held
    assert not holdings.pack(held, 1000.0)
    held.holds_credit, held.running = False, True
    assert not holdings.pack(held, 1000.0)


def test_a_packed_job_handed_back_is_gone_without_unpacking() -> None:
    holdings = Holdings("w1", MemoryStorage(Keyspace()))
    held = HeldJob(JobRecord("j1", "later", {}), Link())
    holdings.jobs["j1"] = held
    assert holdings.pack(held, 1000.0)
    assert holdings.forget_packed("j1")
    assert not holdings.forget_packed("j1")
    assert len(holdings) == 0
    assert holdings.find("j1") is None


def test_control_stops_the_node_by_itself_without_a_hook() -> None:
    async def scenario() -> list[str]:
        ctl, _, calls = control()
        ctl.apply("drain")
        await asyncio.sleep(0)
        return calls

    assert asyncio.run(scenario()) == ["pause", "stop"]
