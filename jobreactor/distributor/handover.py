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

Without discovery there is nobody to hand over to: `Distributor.stop` drains, then
`drop_the_rest` says what stays in the journal or is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.distributor.journal import Journal
from jobreactor.distributor.outcomes import Outcomes
from jobreactor.distributor.status import Status
from jobreactor.distributor.tracking import Tracker

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


class Group(Protocol):
    """What hand-over needs of the distributor's group membership (presence.py)."""

    async def release(self, *, journal_empty: bool) -> bool: ...

    async def stop(self, journal_empty: bool) -> None: ...


@dataclass(slots=True)
class Leaving:
    """The parts of a stopping distributor that hand-over works with."""

    address: str
    group: Group | None  # discovery only
    journal: Journal | None
    status: Status
    dispatcher: Dispatcher
    tracker: Tracker
    outcomes: Outcomes
    drain: Callable[[float], Awaitable[None]]  # until nothing is out (bounded)


async def hand_over(d: Leaving, goodbye: Callable[[str], None], timeout: float) -> None:
    """Stop a discovery group member without waiting for its jobs (`goodbye` tells every
    connected node so)."""
    if d.journal is None:  # nothing to hand over: let jobs about to finish report first
        await d.drain(min(timeout, _MEMORY_DRAIN_S))
    d.status.sealed = True  # no dispatch, no node message handled from here on
    pending = [(job.id, job.name) for job in d.dispatcher.drain()]
    out = d.tracker.peek(len(d.tracker))
    if d.journal is None:
        for entry in out:  # named once, by _drop: the closing sessions find nothing more
            d.tracker.forget(entry.job_id)
        await _drop(d, goodbye, pending + [(e.job_id, e.name) for e in out])
        return
    if not await d.journal.durable(min(timeout, _FLUSH_TIMEOUT_S)):
        logger.warning(
            "distributor %s stopping: its journal's last writes are not stored (Redis slow or "
            "away); the adopter may run or report some jobs again",
            d.address,
        )
    goodbye("distributor stopping")
    waiting = list(d.outcomes.waiting)
    assert d.group is not None  # hand-over is for members of a group
    released = await d.group.release(journal_empty=not waiting)
    if waiting:
        logger.info(
            "distributor %s stopping: %d pending and %d out-on-node job(s) %s",
            d.address,
            len(pending),
            len(out),
            "handed over to its group (journal released for adoption now)"
            if released
            else "stay in its journal (adopted after adopt_grace)",
        )
    _warn_closures(d.address, [job_id for job_id in waiting if d.outcomes.has_closure(job_id)])
    for job_id in waiting:
        d.outcomes.resolve_cancelled(job_id, "handed over: the distributor stopped", forget=False)


async def _drop(d: Leaving, goodbye: Callable[[str], None], lost: list[tuple[str, str]]) -> None:
    """Memory storage: name every lost outcome, leave, say goodbye, resolve the handles."""
    log_lost(
        lost,
        "distributor stopping with memory storage, nothing to hand over: the outcome "
        "(feedbacks, handles) of these is lost; pending ones are dropped, ones out on "
        "nodes still run (use redis storage on the distributor to hand them over)",
    )
    if d.group is not None:
        await d.group.stop(journal_empty=True)
    goodbye("distributor stopping")
    for job_id in list(d.outcomes.waiting):
        d.outcomes.resolve_cancelled(job_id, "dropped: the distributor stopped")


def _warn_closures(address: str, closures: list[str]) -> None:
    if closures:
        logger.warning(
            "distributor %s stopping: %d handed-over job(s) have closure feedbacks, which "
            "can't move to another process (register them by name to keep them): %s",
            address,
            len(closures),
            " ".join(closures[:_IDS_PER_LINE]),
        )


async def drop_the_rest(d: Leaving, goodbye: Callable[[str], None]) -> None:
    """A stop without hand-over, after its drain: what is still pending stays in the journal
    (or is dropped), the group is left, nodes are told goodbye (acknowledging their last
    reports), and what the app still waits for is resolved."""
    dropped = d.dispatcher.drain()
    keep = d.journal is not None  # a durable distributor resumes them at restart
    if dropped and keep:
        logger.info(
            "distributor stopping: %d pending job(s) stay in its journal for the next start",
            len(dropped),
        )
    elif dropped:
        logger.warning(
            "distributor stopping: %d pending job(s) dropped (memory storage keeps nothing; "
            "use redis storage on the distributor to keep them)",
            len(dropped),
        )
    outcomes = d.outcomes
    for job in dropped:
        outcomes.resolve_cancelled(job.id, "dropped: the distributor stopped", forget=not keep)
    if d.group is not None:  # leave first: nodes must not redial us
        await d.group.stop(journal_empty=not dropped and not outcomes.waiting)
    if d.journal is not None:  # the reports' removals stored: acknowledge them (Bye)
        await d.journal.durable(timeout=2.0)
    goodbye("distributor stopping")
    for job_id in list(outcomes.waiting):
        outcomes.resolve_cancelled(job_id, "abandoned: the distributor stopped", forget=not keep)
