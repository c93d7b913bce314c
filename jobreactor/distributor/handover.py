"""Hand-over: how a distributor of a discovery group stops when its process recycles.

A web worker that recycles (`--max-requests`, HUP, a deploy) must not sit in its exit hook
waiting for jobs out on nodes: the server spawns its replacement only after it exits, and the
site stalls (issue 17). So a group member stops in well under a second of its own work:

1. It dispatches nothing more and ignores what nodes send from now on (a report left
   unacknowledged is sent again by its node, to whoever takes the job over).
2. Redis storage: the journal's last writes are stored, the nodes are told goodbye, the
   distributor leaves the registry and *releases* its journal (`JournalClaims.release`, fenced
   by its epoch): a live member of the group adopts it at once (not after `adopt_grace`), or
   the next one to start does. Pending jobs are dispatched there, jobs out on nodes are
   re-routed there by their nodes, and feedbacks registered by name fire there.
3. Memory storage keeps nothing to hand over: after a short drain (half a second: jobs about
   to finish still report), every job whose outcome is lost here (pending ones are dropped;
   ones out on nodes still run, but report to nobody) is logged at WARNING with its id and
   name, never silently.

Without discovery there is nobody to hand over to: `Distributor.stop` drains as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobreactor.distributor.distributor import Distributor
    from jobreactor.distributor.presence import Presence

logger = logging.getLogger("jobreactor.distributor")

# Jobs named per WARNING line when outcomes are lost (every one is named, in as many lines).
_IDS_PER_LINE = 200
# How long the journal's last writes may take before the journal is released anyway.
_FLUSH_TIMEOUT_S = 5.0
# Memory storage: how long a recycling worker waits for jobs out on nodes before it names the
# rest as lost. Short jobs still report; the replacement worker is not held up for long ones.
_MEMORY_DRAIN_S = 0.5


def log_lost(jobs: Iterable[tuple[str, str]], why: str) -> int:
    """Log `(job id, job name)` pairs at WARNING, `_IDS_PER_LINE` per line; how many."""
    lost = list(jobs)
    for start in range(0, len(lost), _IDS_PER_LINE):
        chunk = lost[start : start + _IDS_PER_LINE]
        logger.warning(
            "%s: %d job(s) [%d-%d of %d]: %s",
            why,
            len(chunk),
            start + 1,
            start + len(chunk),
            len(lost),
            " ".join(f"{job_id}({name})" for job_id, name in chunk),
        )
    return len(lost)


async def hand_over(distributor: Distributor, timeout: float) -> None:
    """Stop `distributor` (a discovery group member) without waiting for its jobs."""
    presence = distributor.presence
    assert presence is not None
    journal = distributor.journal
    if journal is None:  # nothing to hand over: let jobs about to finish report first
        await distributor.drain_for(min(timeout, _MEMORY_DRAIN_S))
    distributor.sealed = True  # no dispatch, no node message handled from here on
    pending = [(job.id, job.name) for job in distributor.dispatcher.drain()]
    out = distributor.tracker.peek(len(distributor.tracker))
    if journal is None:
        for entry in out:  # named once, by _drop: the closing sessions find nothing more
            distributor.tracker.forget(entry.job_id)
        await _drop(distributor, presence, pending + [(e.job_id, e.name) for e in out])
        return
    if not await journal.durable(min(timeout, _FLUSH_TIMEOUT_S)):
        logger.warning(
            "distributor %s stopping: its journal's last writes are not stored (Redis slow or "
            "away); the adopter may run or report some jobs again",
            distributor.address,
        )
    _goodbye(distributor)
    waiting = distributor.waiting_ids()
    released = await presence.release(journal_empty=not waiting)
    if waiting:
        logger.info(
            "distributor %s stopping: %d pending and %d out-on-node job(s) %s",
            distributor.address,
            len(pending),
            len(out),
            "handed over to its group (journal released for adoption now)"
            if released
            else "stay in its journal (adopted after adopt_grace)",
        )
    _warn_closures(distributor, [job_id for job_id in waiting if distributor.has_closure(job_id)])
    for job_id in waiting:
        distributor.resolve_cancelled(job_id, "handed over: the distributor stopped", keep=True)


async def _drop(distributor: Distributor, presence: Presence, lost: list[tuple[str, str]]) -> None:
    """Memory storage: name every lost outcome, leave, say goodbye, resolve the handles."""
    log_lost(
        lost,
        "distributor stopping with memory storage, nothing to hand over: the outcome "
        "(feedbacks, handles) of these is lost; pending ones are dropped, ones out on "
        "nodes still run (use redis storage on the distributor to hand them over)",
    )
    await presence.stop(journal_empty=True)
    _goodbye(distributor)
    for job_id in distributor.waiting_ids():
        distributor.resolve_cancelled(job_id, "dropped: the distributor stopped", keep=False)


def _warn_closures(distributor: Distributor, closures: list[str]) -> None:
    if closures:
        logger.warning(
            "distributor %s stopping: %d handed-over job(s) have closure feedbacks, which "
            "can't move to another process (register them by name to keep them): %s",
            distributor.address,
            len(closures),
            " ".join(closures[:_IDS_PER_LINE]),
        )


def _goodbye(distributor: Distributor) -> None:
    for session in distributor.open_sessions():
        session.goodbye("distributor stopping")
