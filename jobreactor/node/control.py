"""An operator's hold on one node: quiet, resume, drain (`jobreactor node quiet|resume|drain`,
the dashboard's node page).

- `quiet`: the node finishes what it holds (running, prefetched, scheduled) and takes no new
  jobs: its credit goes to 0 on every link (a `Return` with no ids) and no credit is granted
  back while quiet, so the distributor sends it nothing.
- `resume`: credit is granted again (what the node's window has free), jobs flow.
- `drain`: quiet, then stop as on SIGTERM: unstarted jobs are handed back, running ones
  finish within `shutdown_timeout`. A node run by `jobreactor node` exits (its process's
  `stop_hook`); a node inside an app stops alone.

The ops arrive as a `protocol.Command` from a distributor the node is connected to
(node/commands.py), or on the node's Redis commands channel (`storage/wakeups.py`) as
`CONTROL_PREFIX + op`, so a dashboard or CLI with only the Redis URL reaches it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from jobreactor.errors import NodeOpError

logger = logging.getLogger("jobreactor.node")

OPS: Final = ("quiet", "resume", "drain")
# A message on a node's commands channel that is a control op, not a job id to wake.
CONTROL_PREFIX: Final = "\x00control:"


class Intake:
    """Whether the node grants credit: not while quiet (an operator), nor once closed (a
    recycling child, `Node.close_intake`). `shut` is read per credit on the hot path."""

    __slots__ = ("closed", "quiet", "shut", "stopping")

    def __init__(self) -> None:
        self.quiet = False
        self.closed = False
        self.shut = False
        self.stopping = False  # the node stops: jobs that come are handed back

    def set(self, *, quiet: bool | None = None, closed: bool | None = None) -> None:
        if quiet is not None:
            self.quiet = quiet
        if closed is not None:
            self.closed = closed
        self.shut = self.quiet or self.closed


class NodeControl:
    """The node's state for operators: "running", "quiet" or "draining"."""

    def __init__(
        self,
        node_name: str,
        intake: Intake,
        *,
        pause: Callable[[], None],
        resume: Callable[[], None],
        stop: Callable[[], Awaitable[None]],
        retry_now: Callable[[str], bool],
    ) -> None:
        self._name = node_name
        self._intake = intake
        self._pause = pause  # credit 0 on every link
        self._resume = resume  # free credit granted again on every link
        self._stop_node = stop
        self._retry_now = retry_now
        self.state = "running"
        self.stop_hook: Callable[[], None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    @property
    def quiet(self) -> bool:
        return self._intake.quiet

    def apply(self, op: str, who: str = "?") -> str:
        """Do `op`; the state after it. Raises NodeOpError (a ValueError) for an op it doesn't
        know, or for `resume` while draining (a stop can't be taken back)."""
        if op not in OPS:
            raise NodeOpError(f"unknown node op {op!r} (one of {', '.join(OPS)})")
        if op == "resume":
            if self.state == "draining":
                raise NodeOpError(f"node {self._name} is draining: it can't resume")
            if self.state == "quiet":
                self.state = "running"
                self._intake.set(quiet=False)
                self._resume()
        elif self.state == "running" or (op == "drain" and self.state == "quiet"):
            self.state = "quiet" if op == "quiet" else "draining"
            self._intake.set(quiet=True)
            self._pause()
            if op == "drain":
                self._stop()
        logger.info("node %s: %s requested by %s; now %s", self._name, op, who, self.state)
        return self.state

    def retry_now(self, job_id: str) -> bool:
        """A job of ours waiting for its next attempt (status `error`) runs now, keeping its
        attempt count (the dashboard's "retry now"); False if we hold no such job."""
        if not self._retry_now(job_id):
            return False
        logger.info("node %s: job %s retried now at an operator's request", self._name, job_id)
        return True

    def _stop(self) -> None:
        if self.stop_hook is not None:
            self.stop_hook()
        else:
            # Not one of the node's own tasks: its stop cancels those.
            self._stopping = asyncio.ensure_future(self._stop_node())
