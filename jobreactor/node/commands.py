"""What a node does when the app asks it to act on its storage (protocol.Command).

`release_lock(key)`: Resque Lock's release by hand, whoever holds the lock (its `force_unlock`).
`retry(job_id)`: take a failed job out of the storage atomically (any node's, as the storage
keeps them by node name: a Redis fleet shares one), reset its attempts and hand it back to the
app's distributor, which enqueues it again with the same id. The same `take_failed` serves
`JR.retry` on storages the app's own reactor holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from jobreactor.errors import StorageError
from jobreactor.job import JobStatus
from jobreactor.node.control import OPS
from jobreactor.protocol import Command, CommandResult
from jobreactor.storage.failed import take_failed

if TYPE_CHECKING:
    from jobreactor.node.link import DistributorLink
    from jobreactor.node.node import Node

logger = logging.getLogger("jobreactor.node")


async def _release_lock(node: Node, command: Command) -> CommandResult:
    found = await node.storage.force_unlock(command.arg)
    if found:
        logger.info("%s: lock %r released at the app's request", node.name, command.arg)
    return CommandResult(command.command_id, found, {}, "")


async def _retry(node: Node, link: DistributorLink, command: Command) -> CommandResult | None:
    taken = await take_failed(node.storage, command.arg)
    if taken is None:  # not failed: maybe waiting for its next attempt here ("retry now")
        return CommandResult(command.command_id, node.control.retry_now(command.arg), {}, "")
    owner, job = taken
    if link.conn is None or not link.is_ready:
        # The answer can't leave: put the job back as it was rather than lose it.
        job.status = JobStatus.FAILED
        await node.storage.save_many(owner, [job])
        return None
    logger.info("%s: failed job %s handed back for a retry", node.name, job.id)
    return CommandResult(command.command_id, True, job.to_dict(), "")


def _control(node: Node, command: Command) -> CommandResult:
    """quiet / resume / drain (node/control.py); `arg` is "<node name>:<who asked>"."""
    name, _, who = command.arg.partition(":")
    if name != node.name:
        return CommandResult(command.command_id, False, {}, "")
    try:
        node.control.apply(command.op, who=who or "the app")
    except ValueError as exc:
        return CommandResult(command.command_id, True, {}, str(exc))
    return CommandResult(command.command_id, True, {}, "")


def answer(node: Node, link: DistributorLink, command: Command) -> None:
    """Do `command` off the message path and send the result on the same link."""

    async def run_and_reply() -> None:
        result: CommandResult | None
        try:
            if command.op == "release_lock":
                result = await _release_lock(node, command)
            elif command.op in OPS:
                result = _control(node, command)
            else:
                result = await _retry(node, link, command)
        except StorageError as exc:
            result = CommandResult(command.command_id, False, {}, str(exc))
        if result is not None and link.conn is not None and link.is_ready:
            link.conn.send(result)

    node._spawn(run_and_reply())
