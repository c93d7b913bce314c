"""`jobreactor jobs retry ID` reaches a running Redis node by a push, not by polling."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from jobreactor import JobFailed, Reactor, Registry
from tests.conftest import Recorder
from tests.redis_server import unique_prefix

pytestmark = pytest.mark.timeout(60)


def test_cli_retry_of_a_failed_job_runs_it_again_on_its_live_node(
    reactor: Reactor, any_redis_url: str
) -> None:
    prefix = unique_prefix()
    reactor.config.update(redis_prefix=prefix, hiredis_url=any_redis_url)
    registry, runs = Registry(), Recorder()
    state = {"fail": True}

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        runs(args["n"])
        if state["fail"]:
            raise ValueError("not yet")

    reactor.start_node("r", "redis", None, registry=registry)
    handle = reactor.enqueue("flaky", {"n": 1}, {"max_attempt": 1})
    assert handle is not None
    with pytest.raises(JobFailed):
        handle.result(10)
    state["fail"] = False
    proc = subprocess.run(
        [sys.executable, "-m", "jobreactor", "jobs", "--redis-url", any_redis_url,
         "--prefix", prefix, "retry", handle.id],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert runs.wait(2) == [1, 1]  # ran again, woken by the retry
