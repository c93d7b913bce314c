"""Jobs coming in and going back: `receive` stores them (acknowledged only then) and schedules
them; while the storage refuses writes the node takes nothing (credit 0) and probes it; at a
stop, jobs not started go back to their distributor (`hand_back_unstarted`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from jobreactor.cron import skip_missed_tick
from jobreactor.errors import StorageError
from jobreactor.job import JobRecord
from jobreactor.node.control import Intake
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.limits import NodeLimits
from jobreactor.node.link import DistributorLink
from jobreactor.node.persistence import Persister
from jobreactor.node.timetable import Timetable
from jobreactor.protocol import Record
from jobreactor.storage.base import Storage

logger = logging.getLogger("jobreactor.node")


class JobIntake:
    def __init__(  # noqa: PLR0913 (the parts it works with, by name)
        self,
        node_name: str,
        storage: Storage,
        *,
        window: int,
        retry_every_s: float,
        holdings: Holdings,
        timetable: Timetable,
        store: Persister,
        links: list[DistributorLink],
        intake: Intake,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self._name = node_name
        self._storage = storage
        self._window = window  # credits a node grants: concurrency + prefetch
        self._retry_every_s = retry_every_s
        self._holdings = holdings
        self._timetable = timetable
        self._store = store
        self._links = links  # Membership's list: links come and go
        self._intake = intake
        self._spawn = spawn
        self._inbox: list[HeldJob] = []
        self._storing = False
        self.probing = False  # the storage refused a write: no credit until it answers

    def free_credits(self, link: DistributorLink) -> int:
        intake = self._intake
        if intake.stopping or intake.shut or self.probing:
            return 0
        used = sum(1 for h in self._holdings.jobs.values() if h.link is link and h.holds_credit)
        return max(0, self._window - used)

    def receive(self, link: DistributorLink, jobs: list[tuple[int, Record]]) -> None:
        holdings, intake = self._holdings, self._intake
        for lease, data in jobs:
            job_id = data["id"]
            if intake.stopping or intake.closed:
                link.hand_back([job_id])
                continue
            existing = holdings.find(job_id)
            if existing is not None:  # sent again after a reconnect: keep ours, take the lease
                existing.record.lease, existing.link = lease, link
                link.ack(lease, credit=True)
                continue
            try:
                record = JobRecord.from_dict(data)
            except TypeError as exc:
                link.nack(lease, f"bad job record: {exc}")
                continue
            record.node = self._name
            record.lease = lease
            # Shared strings: name and distributor repeat across millions of pending jobs.
            record.name = sys.intern(record.name)
            record.distributor = sys.intern(record.distributor)
            held = HeldJob(record, link, origin=link.instance)
            holdings.jobs[job_id] = held
            self._inbox.append(held)
        if self._inbox and not self._storing:
            self._storing = True
            self._spawn(self._store_inbox())

    async def _store_inbox(self) -> None:
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                try:
                    await self._storage.save_many(self._name, [h.record for h in batch])
                except StorageError as exc:
                    self._refused(batch, exc)
                    continue
                self._accept(batch)
        finally:
            self._storing = False

    def _refused(self, batch: list[HeldJob], exc: StorageError) -> None:
        logger.error(
            "%s could not store %d job(s): %s; handing them back and taking no more until the "
            "storage answers again",
            self._name,
            len(batch),
            exc,
        )
        for held in batch:
            if isinstance(held.link, DistributorLink):
                held.link.nack(held.record.lease, str(exc))
            self._holdings.jobs.pop(held.record.id, None)
        if not self.probing:
            # Take no jobs (credit 0 on every link) until the storage answers: no ping-pong
            # of jobs between us and the distributor meanwhile.
            self.probing = True
            for link in self._links:
                link.pause()
            self._spawn(self._probe_storage())

    async def _probe_storage(self) -> None:
        """Retry the storage with backoff; when it answers, give back the withheld credits."""
        delay = self._retry_every_s
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._storage.holder(f"probe:{self._name}")
                except StorageError:
                    delay = min(delay * 2, 30.0)
                    continue
                break
            self.probing = False
            for link in self._links:
                link.grant(self.free_credits(link))
            logger.info("%s: storage answers again; taking jobs", self._name)
        finally:
            self.probing = False

    def _accept(self, batch: list[HeldJob]) -> None:
        now_loop, now_epoch = time.monotonic(), time.time()
        schedule = self._timetable.schedule
        for held in batch:
            # Only this node's links: received by one, or moved to another (membership.py).
            link: DistributorLink | None = held.link  # type: ignore[assignment]
            if held.dropped or link is None:
                continue
            record = held.record
            if record.cron is not None:
                skip_missed_tick(record, now_epoch, self._name)
            due = now_loop + (record.run_at_ts - now_epoch)
            instant = due <= now_loop
            held.holds_credit = instant
            link.ack(record.lease, credit=not instant)
            schedule(held, due, now_loop)

    def hand_back_unstarted(
        self, limits: NodeLimits | None, forget: Callable[[HeldJob], None]
    ) -> None:
        """Give jobs not started back to their distributor (memory: all; durable: due ones)."""
        by_link: dict[DistributorLink, list[str]] = {}
        holdings, durable = self._holdings, self._storage.durable
        for job_id, held in list(holdings.jobs.items()):
            link = held.link
            if held.running or not isinstance(link, DistributorLink) or not link.is_ready:
                continue
            # Durable storage keeps scheduled jobs; due ones (ready, or waiting for a limit's
            # slot) go back, to run elsewhere now.
            if durable and not (
                job_id in holdings.ready or (limits is not None and limits.is_waiting(job_id))
            ):
                continue
            by_link.setdefault(link, []).append(job_id)
        if not durable:  # packed jobs are never due now: durable storage keeps them
            for job_id, _, by, _ in holdings.packed_jobs():
                if isinstance(by, DistributorLink) and by.is_ready:
                    by_link.setdefault(by, []).append(job_id)
        for link, job_ids in by_link.items():
            link.hand_back(job_ids)
            for job_id in job_ids:
                unpacked = holdings.jobs.get(job_id)
                if unpacked is None:
                    if holdings.forget_packed(job_id):
                        self._store.destroy(job_id)
                else:
                    forget(unpacked)
            logger.info("%s handed %d job(s) back to %s", self._name, len(job_ids), link.address)
