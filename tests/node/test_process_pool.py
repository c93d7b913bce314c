"""`defer="process"` (issue 21): plain job bodies in a process pool, data through msgpack."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from jobreactor import JobFailed, Reactor, Registry
from jobreactor.errors import CannotCrossProcess
from jobreactor.node.process_pool import _pack, step_refs
from tests.conftest import make_test_reactor, wait_until
from tests.node import process_jobs

pytestmark = pytest.mark.timeout(120)


def start(reactor: Reactor, registry: Registry) -> None:
    reactor.start_node(
        "p1", "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry
    )


def test_a_cpu_bound_body_runs_in_another_process_while_the_loop_runs_other_jobs(
    reactor: Reactor, tmp_path: Path
) -> None:
    registry = Registry()
    registry.job("crunch")(process_jobs.crunch)
    registry.job("quick")(lambda args: args.update(done=True))
    start(reactor, registry)
    started, flag = tmp_path / "started", tmp_path / "flag"
    crunch = reactor.enqueue(
        "crunch", {"started": str(started), "flag": str(flag)}, {"defer": "process"}
    )
    assert crunch is not None
    wait_until(started.exists, 60, "the CPU-bound body to start in the pool")
    quick = reactor.enqueue("quick", {})
    assert quick is not None
    assert quick.result(30) == {"done": True}  # done while the other one still spins
    assert not crunch.done()
    flag.write_text("go")
    result = crunch.result(60)
    assert result["pid"] != os.getpid()
    assert result["spun"] is True


def test_errors_cross_back_as_data_and_closures_are_refused(reactor: Reactor) -> None:
    registry = Registry()
    registry.job("add_one")(process_jobs.add_one)
    registry.job("boom")(process_jobs.boom)
    registry.job("lambda")(lambda args: None)
    start(reactor, registry)
    ok = reactor.enqueue("add_one", {"n": 1}, {"defer": "process"})
    assert ok is not None
    assert ok.result(60)["n"] == 2
    for name, error_class in (("boom", "ValueError"), ("lambda", "CannotCrossProcess")):
        handle = reactor.enqueue(name, {"n": 1}, {"defer": "process", "max_attempt": 1})
        assert handle is not None
        with pytest.raises(JobFailed) as failed:
            handle.result(60)
        assert failed.value.args_dict["error"]["class"] == error_class


def test_a_job_from_the_job_directory_is_found_by_name(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "double.py").write_text(
        textwrap.dedent(
            """
            import os
            from jobreactor import job

            @job("double")
            def double(args):
                args["n"] *= 2
                args["pid"] = os.getpid()
            """
        )
    )
    reactor = make_test_reactor(job_directory=str(jobs))
    try:
        reactor.start_distributor("127.0.0.1", 0)
        reactor.start_node("p2", "memory")
        handle = reactor.enqueue("double", {"n": 21}, {"defer": "process"})
        assert handle is not None
        result = handle.result(60)
        assert result["n"] == 42
        assert result["pid"] != os.getpid()
    finally:
        reactor.stop(timeout=15)


def test_what_cannot_cross_is_named() -> None:
    registry = Registry()

    def nested(args: dict[str, Any]) -> None:
        pass

    registry.job("nested")(nested)
    with pytest.raises(CannotCrossProcess, match="nested function"):
        step_refs(registry["nested"])
    with pytest.raises(CannotCrossProcess, match="msgpack data"):
        _pack({"s": {1, 2}}, "args")
