"""Membership: the node's side of discovery: links that come and go, re-routing, stats.

`Discovered` (discovered.py) decides; these are the node operations it calls. Node (node.py)
mixes this in.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any, cast

from jobreactor.metrics import METRICS
from jobreactor.node.attempts import Attempts, Held
from jobreactor.node.link import DistributorLink
from jobreactor.node.packing import Packing
from jobreactor.protocol import ReportItem

if TYPE_CHECKING:
    from jobreactor.node.discovered import Discovered
    from jobreactor.node.node import Node
    from jobreactor.node.scheduler import TimerHeap

logger = logging.getLogger("jobreactor.node")


class Membership(Packing, Attempts):
    """The discovery half of Node. The attributes below are Node's."""

    if TYPE_CHECKING:
        group: str
        discovered: Discovered | None
        _ssl: ssl.SSLContext | None
        _stopping: bool
        _window: int
        _concurrency: int
        _timers: TimerHeap

        def _run_link(self, link: DistributorLink) -> None: ...

        def _persist(self, record: Any) -> None: ...

    def holds_from(self, link: DistributorLink) -> bool:
        if any(h.link is link and not h.dropped for h in self._jobs.values()):
            return True
        return any(by is link for _, _, by, _ in self._packed_jobs())

    def instance_mismatch(self) -> None:
        """A discovered address answered as another instance: look at the registry again."""
        if self.discovered is not None:
            self.discovered.watcher.refresh()

    def add_link(self, host: str, port: int, expected_instance: str) -> DistributorLink:
        """Dial one more distributor (found by discovery, listed as `expected_instance`)."""
        link = DistributorLink(cast("Node", self), host, port, self._ssl)
        link.expected_instance = expected_instance
        self.links.append(link)
        self._run_link(link)
        return link

    def remove_link(self, link: DistributorLink) -> None:
        """Stop dialling `link`'s distributor (gone). Its jobs and reports stay with it."""
        link.stop()
        if link in self.links:
            self.links.remove(link)

    def outcomes_lost(self, link: DistributorLink) -> None:
        """`link`'s distributor left with memory storage (nothing to hand over): the jobs held
        from it still run, but their outcomes reach nobody. Say so, job by job."""
        link.outcome_lost = True
        held = [(h.record.id, h.record.name) for h in self._jobs.values() if h.link is link]
        held += [(job_id, "?") for job_id, _, by, _ in self._packed_jobs() if by is link]
        reports = link.take_reports()
        if held or reports:
            logger.warning(
                "%s: distributor %s left with memory storage: the outcome of %d job(s) held "
                "from it and %d unacknowledged report(s) is lost (the jobs still run here): %s",
                self.name,
                link.address,
                len(held),
                len(reports),
                " ".join(f"{job_id}({name})" for job_id, name in held)
                + " "
                + " ".join(item.job_id for _, item in reports),
            )

    def reroute(self, old: str, bucket: DistributorLink | None, target: DistributorLink) -> None:
        """Jobs from instance `old` (and `bucket`'s reports) now belong to `target`'s."""
        moved, reports = self._move(target, old, bucket)
        pairs = [(h.record.id, h.record.lease) for h in moved]
        ids = {job_id for job_id, _ in pairs}
        pairs += [(item.job_id, item.lease) for _, item in reports if item.job_id not in ids]
        target.send_held(pairs, old)  # first: the adopter binds them to us, then takes the reports
        target.adopt_reports(reports)
        if pairs:
            logger.warning(
                "%s: %d job(s) and %d report(s) of vanished distributor %s go to %s, "
                "which adopted its journal",
                self.name,
                len(moved),
                len(reports),
                old,
                target.address,
            )

    def rehome(self, bucket: DistributorLink, target: DistributorLink) -> None:
        """`bucket`'s jobs and reports go to `target`, a live link to the same instance.

        The distributor learns it in a `Held` (no origin): it binds the jobs to `target`'s
        connection, or answers `Dropped` for those it gave to another node meanwhile.
        """
        moved, reports = self._move(target, None, bucket)
        pairs = [(h.record.id, h.record.lease) for h in moved]
        ids = {job_id for job_id, _ in pairs}
        pairs += [(item.job_id, item.lease) for _, item in reports if item.job_id not in ids]
        if not pairs:
            return
        target.send_held(pairs, "")
        target.adopt_reports(reports)
        logger.info(
            "%s: %d job(s) and %d report(s) held for distributor %s move to its link %s",
            self.name,
            len(moved),
            len(reports),
            target.instance,
            target.configured,
        )

    def _move(
        self, target: DistributorLink, old: str | None, bucket: DistributorLink | None
    ) -> tuple[list[Held], list[tuple[int, ReportItem]]]:
        """Jobs from instance `old` or link `bucket` now held for `target`; `bucket`'s reports."""

        def moves(link: DistributorLink | None, origin: str) -> bool:
            return origin == old or (bucket is not None and link is bucket)

        for job_id, _, by, origin in self._packed_jobs():
            if moves(by, origin):
                self._held(job_id)  # unpacked: its record changes below
        moved = [h for h in self._jobs.values() if not h.dropped and moves(h.link, h.origin)]
        for held in moved:
            held.link, held.origin = target, target.instance
            held.record.distributor = target.configured
            self._persist(held.record)
        return moved, bucket.take_reports() if bucket is not None else []

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stats(self) -> dict[str, Any]:
        """What this node publishes with its registry beat (and dashboards read)."""
        return {
            "name": self.name,
            "group": self.group,
            "storage": self.storage.kind,
            "held": (len(self._jobs) + self._packed_n),
            "scheduled": len(self._timers),
            "running": self._running,
            "free_credit": max(0, self._window - (len(self._jobs) + self._packed_n)),
            "distributors": [link.address for link in self.links if link.is_ready],
            "concurrency": self._concurrency,
            "state": self.control.state,  # type: ignore[attr-defined]
            "limits": self.limits.stats() if self.limits is not None else {},
            "metrics": METRICS.snapshot(),
        }
