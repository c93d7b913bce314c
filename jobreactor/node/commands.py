"""What a node does when the app asks it to act on its storage (protocol.Command).

`release_lock(key)`: Resque Lock's release by hand, whoever holds the lock (its `force_unlock`).
`retry(job_id)`: take a failed job out of the storage atomically (any node's, as the storage
keeps them by node name: a Redis fleet shares one), reset its attempts and hand it back to the
app's distributor, which enqueues it again with the same id. The same `take_failed` serves
`JR.retry` on storages the app's own reactor holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from jobreactor.errors import StorageError
from jobreactor.job import JobStatus
from jobreactor.node.control import OPS, NodeControl
from jobreactor.node.link import DistributorLink
from jobreactor.protocol import Command, CommandResult
from jobreactor.storage.base import Storage
from jobreactor.storage.failed import take_failed

logger = logging.getLogger("jobreactor.node")


class Commands:
    """Answers a node's commands; each runs off the message path (`spawn`)."""

    def __init__(
        self,
        node_name: str,
        storage: Storage,
        control: NodeControl,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self._name = node_name
        self._storage = storage
        self._control = control
        self._spawn = spawn

    def answer(self, link: DistributorLink, command: Command) -> None:
        """Do `command` off the message path and send the result on the same link."""
        self._spawn(self._run_and_reply(link, command))

    async def _run_and_reply(self, link: DistributorLink, command: Command) -> None:
        result: CommandResult | None
        try:
            if command.op == "release_lock":
                result = await self._release_lock(command)
            elif command.op in OPS:
                result = self._apply(command)
            else:
                result = await self._retry(link, command)
        except StorageError as exc:
            result = CommandResult(command.command_id, False, {}, str(exc))
        if result is not None:
            link.send(result)

    async def _release_lock(self, command: Command) -> CommandResult:
        found = await self._storage.force_unlock(command.arg)
        if found:
            logger.info("%s: lock %r released at the app's request", self._name, command.arg)
        return CommandResult(command.command_id, found, {}, "")

    async def _retry(self, link: DistributorLink, command: Command) -> CommandResult | None:
        taken = await take_failed(self._storage, command.arg)
        if taken is None:  # not failed: maybe waiting for its next attempt here ("retry now")
            found = self._control.retry_now(command.arg)
            return CommandResult(command.command_id, found, {}, "")
        owner, job = taken
        if not link.is_ready:
            # The answer can't leave: put the job back as it was rather than lose it.
            job.status = JobStatus.FAILED
            await self._storage.save_many(owner, [job])
            return None
        logger.info("%s: failed job %s handed back for a retry", self._name, job.id)
        return CommandResult(command.command_id, True, job.to_dict(), "")

    def _apply(self, command: Command) -> CommandResult:
        """quiet / resume / drain (node/control.py); `arg` is "<node name>:<who asked>"."""
        name, _, who = command.arg.partition(":")
        if name != self._name:
            return CommandResult(command.command_id, False, {}, "")
        try:
            self._control.apply(command.op, who=who or "the app")
        except ValueError as exc:
            return CommandResult(command.command_id, True, {}, str(exc))
        return CommandResult(command.command_id, True, {}, "")
