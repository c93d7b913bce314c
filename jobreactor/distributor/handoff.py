"""What a job carries when it leaves the app, and when it leaves for a node (issue 16).

`label` stamps the distributor and the feedback names on a record before it is stored (the
journal keeps them for a restart or an adopter). `send_assigned` sends jobs whose assignment
the journal has stored: a distributor killed before that restarts with the job unsent, never
unsent-but-running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobreactor.distributor.outcomes import Feedback
from jobreactor.job import JobRecord

if TYPE_CHECKING:
    from jobreactor.distributor.session import NodeSession


def label(
    job: JobRecord, address: str, success: Feedback | str | None, error: Feedback | str | None
) -> None:
    """Stamp the distributor and the feedback names a job's record is stored and sent with."""
    job.distributor = address
    if success is not None:
        job.on_success = success if isinstance(success, str) else job.id
    if error is not None:
        job.on_error = error if isinstance(error, str) else job.id


def send_assigned(jobs: list[tuple[NodeSession, int, dict[str, Any]]]) -> None:
    """Send jobs whose assignment is stored, to the sessions still open (a closed one's jobs
    were queued again when it closed)."""
    for session, lease, record in jobs:
        if session.conn.is_open:
            session.queue_job(lease, record)
