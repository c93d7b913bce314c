"""The app's housekeeping calls that reach where a lock or a failed job lives.

`JR.release_lock(key)` and `JR.retry(job_id)` look first in the storages this reactor holds
(its distributors' and in-process nodes'), then ask the nodes connected to its distributors
(protocol.Command), since a lock or a failed job usually lives in the nodes' Redis, which a
web app with a memory distributor never opens.

A part of `Reactor` (reactor.py): `JR.retry` is `Housekeeping.retry`. It reaches the loop
through the LoopHost and the storages, distributors and nodes through Members (read only).
"""

from __future__ import annotations

from jobreactor.handle import JobHandle
from jobreactor.loophost import LoopHost
from jobreactor.starting import Members
from jobreactor.storage.failed import take_failed

# A node's state after each op went through (node/control.py; a refusal carries its reason).
STATE_AFTER = {"quiet": "quiet", "resume": "running", "drain": "draining"}

# How long a node gets to answer a command (it is one storage round trip or two).
COMMAND_TIMEOUT_S = 5.0


class Housekeeping:
    """release_lock, retry and their `a`-twins."""

    def __init__(self, host: LoopHost, members: Members) -> None:
        self._host = host
        self._members = members

    def release_lock(self, key: str, timeout: float = COMMAND_TIMEOUT_S) -> bool:
        """Resque Lock's release by hand: delete lock `key` whoever holds it; True if held.

        Reaches the nodes' storage through the connected nodes, each given `timeout` seconds.
        """
        return self._host.call(self._release_lock(key, timeout), timeout=self._bound(timeout))

    async def arelease_lock(self, key: str, timeout: float = COMMAND_TIMEOUT_S) -> bool:
        """`release_lock` for coroutines, on any loop."""
        return await self._host.hop(self._release_lock(key, timeout))

    async def _release_lock(self, key: str, timeout: float) -> bool:
        for storage in self._members.storages():
            if await storage.force_unlock(key):
                return True
        return await self._ask_nodes("release_lock", key, timeout)

    def retry(self, job_id: str, timeout: float = COMMAND_TIMEOUT_S) -> bool:
        """Run a failed job (kept because remove_failed_jobs is off) again; True if found.

        It is taken atomically from the storage that keeps it (this reactor's, or a connected
        node's), its attempts reset, and enqueued again with the same id (delayed_job's retry
        of a failed job). No feedbacks are attached: the old ones fired already.
        """
        return self._host.call(self._retry(job_id, timeout), timeout=self._bound(timeout))

    async def aretry(self, job_id: str, timeout: float = COMMAND_TIMEOUT_S) -> bool:
        """`retry` for coroutines, on any loop."""
        return await self._host.hop(self._retry(job_id, timeout))

    async def _retry(self, job_id: str, timeout: float) -> bool:
        for storage in self._members.storages():
            taken = await take_failed(storage, job_id)
            if taken is not None:
                self._members.first().submit(taken[1], None, None, JobHandle(job_id))
                return True
        # A node that has it hands it back; the distributor enqueues it again.
        return await self._ask_nodes("retry", job_id, timeout)

    async def _ask_nodes(self, command: str, argument: str, timeout: float) -> bool:
        """Send `command` to the nodes of every distributor here; True once one found it."""
        for distributor in self._members.distributors:
            answers = await distributor.command(command, argument, timeout)
            if any(answer.found for answer in answers):
                return True
        return False

    def _bound(self, timeout: float) -> float:
        return 30.0 + timeout * max(1, len(self._members.distributors))


async def control_node(
    members: Members,
    name: str,
    op: str,
    who: str,
    timeout: float = COMMAND_TIMEOUT_S,
) -> tuple[str | None, str]:
    """quiet / resume / drain node `name` (node/control.py): a node of this process, else
    through the distributor it is connected to. (its state after, or None if no node of that
    name is in reach; an error text, "" when it went through). Run on the reactor's loop."""
    for node in members.nodes:
        if node.name == name:
            try:
                return node.control.apply(op, who=who), ""
            except ValueError as exc:
                return node.control.state, str(exc)
    for distributor in members.distributors:
        answer = await distributor.command_node(name, op, f"{name}:{who}", timeout)
        if answer is not None and answer.found:
            return (None if answer.error else STATE_AFTER[op]), answer.error
    return None, f"node {name!r} is not connected to this app's distributors"
