"""Asking the connected nodes to act on their storage: JR.release_lock and JR.retry.

A lock taken by a job, or a failed job kept for a retry, lives in the storage of the node that
ran it (its Redis, shared by its fleet), which the app's reactor may not reach at all (a web
app with a memory distributor). So the distributor sends a `Command` to every ready node and
gathers the `CommandResult`s, each bounded by a timeout; a node that leaves meanwhile counts
as "not found".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable
from typing import Protocol

from jobreactor.protocol import Command, CommandResult

logger = logging.getLogger("jobreactor.distributor")


class _Session(Protocol):
    key: int

    @property
    def node_name(self) -> str: ...

    def send_command(self, command: Command) -> None: ...


class NodeCommands:
    """Pending commands, answered by the nodes' sessions."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[tuple[int, int], asyncio.Future[CommandResult | None]] = {}

    async def ask(
        self, sessions: Iterable[_Session], op: str, arg: str, timeout: float
    ) -> list[CommandResult]:
        """Send `op(arg)` to each session; the answers that came within `timeout`."""
        loop = asyncio.get_running_loop()
        waits: list[tuple[str, asyncio.Future[CommandResult | None]]] = []
        for session in sessions:
            command_id = next(self._ids)
            future: asyncio.Future[CommandResult | None] = loop.create_future()
            self._pending[(session.key, command_id)] = future
            session.send_command(Command(command_id, op, arg))
            waits.append((session.node_name, future))
        if not waits:
            return []
        await asyncio.wait([future for _, future in waits], timeout=timeout)
        answers: list[CommandResult] = []
        for name, future in waits:
            if not future.done():
                future.cancel()
                logger.warning("node %s did not answer %s(%r) within %.1fs", name, op, arg, timeout)
                continue
            result = future.result()
            if result is not None and result.error:
                logger.warning("node %s could not %s(%r): %s", name, op, arg, result.error)
            if result is not None:
                answers.append(result)
        self._pending = {k: f for k, f in self._pending.items() if not f.done()}
        return answers

    def answer(self, session_key: int, result: CommandResult) -> None:
        future = self._pending.pop((session_key, result.command_id), None)
        if future is not None and not future.done():
            future.set_result(result)

    def session_gone(self, session_key: int) -> None:
        for key in [k for k in self._pending if k[0] == session_key]:
            future = self._pending.pop(key)
            if not future.done():
                future.set_result(None)
