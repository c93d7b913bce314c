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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from jobreactor.job import JobStatus

if TYPE_CHECKING:
    from jobreactor.node.node import Node

logger = logging.getLogger("jobreactor.node")

OPS: Final = ("quiet", "resume", "drain")
# A message on a node's commands channel that is a control op, not a job id to wake.
CONTROL_PREFIX: Final = "\x00control:"


class NodeControl:
    """The node's state for operators: "running", "quiet" or "draining"."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.state = "running"
        self.quiet = False  # read per credit on the hot path: a plain attribute, not a property
        self.stop_hook: Callable[[], None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    def apply(self, op: str, who: str = "?") -> str:
        """Do `op`; the state after it. Raises ValueError for an op it doesn't know, or for
        `resume` while draining (a stop can't be taken back)."""
        node = self._node
        if op not in OPS:
            raise ValueError(f"unknown node op {op!r} (one of {', '.join(OPS)})")
        if op == "resume":
            if self.state == "draining":
                raise ValueError(f"node {node.name} is draining: it can't resume")
            if self.state == "quiet":
                self.state, self.quiet = "running", False
                for link in node.links:
                    link.grant(node.free_credits(link))
        elif self.state == "running" or (op == "drain" and self.state == "quiet"):
            self.state, self.quiet = ("quiet" if op == "quiet" else "draining"), True
            for link in node.links:
                link.pause()
            if op == "drain":
                self._stop()
        logger.info("node %s: %s requested by %s; now %s", node.name, op, who, self.state)
        return self.state

    def retry_now(self, job_id: str) -> bool:
        """A job of ours waiting for its next attempt (status `error`) runs now, keeping its
        attempt count (the dashboard's "retry now"); False if we hold no such job."""
        node = self._node
        held = node._held(job_id)
        if held is None or held.running or held.record.status != JobStatus.ERROR:
            return False
        node._timers.cancel(job_id)
        node._ready.remove(job_id)
        held.record.run_at_ts = time.time()
        node._persist(held.record)
        node._schedule_at_epoch(held, held.record.run_at_ts)
        logger.info("node %s: job %s retried now at an operator's request", node.name, job_id)
        return True

    def _stop(self) -> None:
        if self.stop_hook is not None:
            self.stop_hook()
        else:
            # Not one of the node's own tasks: its stop cancels those.
            self._stopping = self._node.loop.create_task(self._node.stop())
