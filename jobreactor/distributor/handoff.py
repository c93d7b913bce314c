"""What a job carries when it leaves the app (issue 16).

`label` stamps the distributor and the feedback names on a record before it is stored (the
journal keeps them for a restart or an adopter).
"""

from __future__ import annotations

from jobreactor.distributor.outcomes import Feedback
from jobreactor.job import JobRecord


def label(
    job: JobRecord, address: str, success: Feedback | str | None, error: Feedback | str | None
) -> None:
    """Stamp the distributor and the feedback names a job's record is stored and sent with."""
    job.distributor = address
    if success is not None:
        job.on_success = success if isinstance(success, str) else job.id
    if error is not None:
        job.on_error = error if isinstance(error, str) else job.id
