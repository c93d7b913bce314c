"""What a node keeps per job it holds (`HeldJob`), and what it needs of the link a job came by.

`Outlet` is the narrow face of a distributor link that the job-handling parts see: they report
outcomes and return credit through it, and never reach into the connection behind it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from jobreactor.job import JobRecord
from jobreactor.limits import SlotRef


class Outlet(Protocol):
    """Where a held job's outcome goes: a DistributorLink (link.py), or eager mode's inline one."""

    configured: str  # the address it was configured (or found) with
    address: str  # the distributor's advertised address
    instance: str  # the distributor's instance id (from its Welcome)

    @property
    def is_ready(self) -> bool: ...

    def report(
        self,
        job_id: str,
        lease: int,
        outcome: str,
        final: bool,
        args: dict[str, Any],
        completes_batch: str = "",
    ) -> None: ...

    def grant(self, credits: int = 1) -> None: ...


@dataclass(slots=True)
class HeldJob:
    record: JobRecord  # record.lease: the distributor's lease, stored so a restart keeps it
    link: Outlet | None
    running: bool = False
    cancel_requested: bool = False
    holds_credit: bool = False  # an instant job's credit, returned when its first attempt ends
    dropped: bool = False  # the distributor gave it to someone else: finish silently
    perform_held: bool = False  # holds its perform_id (dj_one) key
    lock_token: str | None = None  # owns its `lock` for the running attempt
    releasing: asyncio.Task[None] | None = None  # releasing its lock / perform id
    origin: str = ""  # instance id of the distributor that sent it (discovery re-routes by it)
    limit_slots: list[SlotRef] | None = None  # concurrency slots it holds (node/limits.py)
    span: Any = None  # the running attempt's OpenTelemetry span (a traced job: otel.py)
