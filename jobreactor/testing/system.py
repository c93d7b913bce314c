"""An in-process job system for integration tests: the real thing, on loopback.

`running_system()` starts a reactor (JR unless told otherwise, since that is what the app's
code enqueues on) with a distributor on a free port and a memory node that loads the jobs
directory you name (or the jobs your tests define with `@job`), and stops it afterwards.
Everything is real: sockets, the node's timers (delays are waited), retries, feedbacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobreactor.errors import ReactorRunning
from jobreactor.nodehandle import NodeHandle
from jobreactor.reactor import JR, Reactor
from jobreactor.testing.recording import OutcomeLog


@dataclass
class JobSystem:
    """A running reactor, its distributor's address, its node and every outcome so far."""

    reactor: Reactor
    address: tuple[str, int]
    node: NodeHandle
    outcomes: OutcomeLog

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no one-shot job is queued, pending or running, and every feedback has run."""
        self.reactor.wait_idle(timeout)


@contextlib.contextmanager
def running_system(
    jobs: str | Path | None = None,
    *,
    reactor: Reactor | None = None,
    config: dict[str, Any] | None = None,
    node_name: str = "test_node",
) -> Iterator[JobSystem]:
    """Start a distributor and a memory node on `reactor` (JR); stop both afterwards.

    `jobs`: the node loads that directory; without it the node runs the reactor's own
    registry (jobs defined with `@job` in modules already imported). `config` updates the
    reactor's config for the duration (e.g. `{"retry_multiplier": 0}`); it is restored after.
    """
    reactor = JR if reactor is None else reactor
    if reactor.ready():
        raise ReactorRunning("the reactor is already running; the test system starts and stops it")
    saved = reactor.config.current
    reactor.config.update(config or {})
    try:
        reactor.run()
        host, port = reactor.start_distributor("127.0.0.1", 0)
        outcomes = OutcomeLog()
        reactor.distributor.observers.append(outcomes)
        if jobs is None:
            node = reactor.start_node(
                node_name, "memory", [(host, port)], registry=reactor.registry
            )
        else:
            node = reactor.start_node(node_name, "memory", [(host, port)], job_directory=jobs)
        yield JobSystem(reactor, (host, port), node, outcomes)
    finally:
        reactor.stop()
        reactor.config.restore(saved)
