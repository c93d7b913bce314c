"""Membership: the node's links, as discovery (discovered.py) adds, retires and pairs them, and
the jobs and reports that move between them when a distributor is replaced or adopted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from jobreactor.job import JobRecord
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.link import DistributorLink
from jobreactor.protocol import ReportItem

logger = logging.getLogger("jobreactor.node")


class Membership:
    """The node's distributor links (`links`, a list the other parts read) and re-routing."""

    def __init__(
        self,
        node_name: str,
        holdings: Holdings,
        persist: Callable[[JobRecord], None],
        *,
        make_link: Callable[[str, int], DistributorLink],
    ) -> None:
        self._name = node_name
        self._holdings = holdings
        self._persist = persist
        self._make_link = make_link
        self.links: list[DistributorLink] = []
        self.tasks: list[asyncio.Task[None]] = []  # each link's dial loop
        self.stopping = False

    def run(self, link: DistributorLink) -> None:
        """Start `link`'s dial loop (it runs until the link is stopped)."""
        task = asyncio.get_running_loop().create_task(link.run(), name=f"link {link.configured}")
        self.tasks.append(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task in self.tasks and not self.stopping:
            self.tasks.remove(task)

    async def stop(self, reports_within: float) -> None:
        """Let each link's reports be acknowledged (bounded), then stop every link."""
        self.stopping = True
        for link in self.links:
            await link.wait_reports_acked(timeout=reports_within)
        for link in self.links:
            link.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def pause(self) -> None:
        """Credit 0 on every link (quiet, recycling, storage refusing writes)."""
        for link in self.links:
            link.pause()

    def resume(self, free_credits: Callable[[DistributorLink], int]) -> None:
        """Each link's free credit granted again."""
        for link in self.links:
            link.grant(free_credits(link))

    def held_from(self, link: DistributorLink) -> list[tuple[str, int]]:
        """(job id, lease) of every job held from `link`'s distributor (its Hello lists them)."""
        return [
            (h.record.id, h.record.lease)
            for h in self._holdings.jobs.values()
            if not h.dropped and (h.link is link or h.record.distributor == link.configured)
        ] + self._holdings.packed_held_from(link)

    def holds_from(self, link: DistributorLink) -> bool:
        if any(h.link is link and not h.dropped for h in self._holdings.jobs.values()):
            return True
        return any(by is link for _, _, by, _ in self._holdings.packed_jobs())

    def bind_recovered(self, link: DistributorLink) -> None:
        """Jobs resumed from storage with no link yet, sent by `link`'s distributor: now we
        know where to report."""
        for held in self._holdings.jobs.values():
            if held.link is None and held.record.distributor in (link.address, link.configured):
                held.link = link

    def add_link(
        self, host: str, port: int, expected_instance: str | None, *, run: bool = True
    ) -> DistributorLink:
        """Dial one more distributor (found by discovery, listed as `expected_instance`; a
        static one: None, and `run` later, at the node's start)."""
        link = self._make_link(host, port)
        link.handshake.expected_instance = expected_instance
        self.links.append(link)
        if run:
            self.run(link)
        return link

    def remove_link(self, link: DistributorLink) -> None:
        """Stop dialling `link`'s distributor (gone). Its jobs and reports stay with it."""
        link.stop()
        if link in self.links:
            self.links.remove(link)

    def outcomes_lost(self, link: DistributorLink) -> None:
        """`link`'s distributor left with memory storage (nothing to hand over): the jobs held
        from it still run, but their outcomes reach nobody. Say so, job by job."""
        link.reports.outcome_lost = True
        jobs = self._holdings.jobs.values()
        held = [(h.record.id, h.record.name) for h in jobs if h.link is link]
        held += [(job_id, "?") for job_id, _, by, _ in self._holdings.packed_jobs() if by is link]
        reports = link.reports.take()
        if held or reports:
            logger.warning(
                "%s: distributor %s left with memory storage: the outcome of %d job(s) held "
                "from it and %d unacknowledged report(s) is lost (the jobs still run here): %s",
                self._name,
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
        target.reports.adopt(reports)
        if pairs:
            logger.warning(
                "%s: %d job(s) and %d report(s) of vanished distributor %s go to %s, "
                "which adopted its journal",
                self._name,
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
        target.reports.adopt(reports)
        logger.info(
            "%s: %d job(s) and %d report(s) held for distributor %s move to its link %s",
            self._name,
            len(moved),
            len(reports),
            target.instance,
            target.configured,
        )

    def _move(
        self, target: DistributorLink, old: str | None, bucket: DistributorLink | None
    ) -> tuple[list[HeldJob], list[tuple[int, ReportItem]]]:
        """Jobs from instance `old` or link `bucket` now held for `target`; `bucket`'s reports."""

        def moves(link: object, origin: str) -> bool:
            return origin == old or (bucket is not None and link is bucket)

        holdings = self._holdings
        for job_id, _, by, origin in holdings.packed_jobs():
            if moves(by, origin):
                holdings.find(job_id)  # unpacked: its record changes below
        moved = [h for h in holdings.jobs.values() if not h.dropped and moves(h.link, h.origin)]
        for held in moved:
            held.link, held.origin = target, target.instance
            held.record.distributor = target.configured
            self._persist(held.record)
        return moved, bucket.reports.take() if bucket is not None else []
