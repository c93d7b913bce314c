"""Node: receives jobs, stores them, runs them on timers, reports back (docs/semantics.md §2, §6).

A coordinator: it builds its parts, wires them with narrow callbacks, and answers its links.
Life of a job here: a link (link.py) delivers it → intake.py stores it (acknowledged only
then) → timetable.py: due now, the ready queue; later, the timer heap (holdings.py) → guards.py
→ attempts.py runs it → settle.py: success / retry / failure / cancel, reported on its link.
State changes are written behind (persistence.py), batched once per tick.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import ssl
from typing import TYPE_CHECKING, Any

from jobreactor.config import ReactorConfig
from jobreactor.definitions import Registry
from jobreactor.job import JobRecord
from jobreactor.metrics import JobMetrics
from jobreactor.node.attempts import Attempts
from jobreactor.node.batches import NodeBatches
from jobreactor.node.commands import Commands
from jobreactor.node.control import Intake, NodeControl
from jobreactor.node.gates import Gates
from jobreactor.node.guards import Guards
from jobreactor.node.held import HeldJob
from jobreactor.node.holdings import Holdings
from jobreactor.node.identity import expand_node_name, new_instance_id
from jobreactor.node.intake import JobIntake
from jobreactor.node.limits import NodeLimits
from jobreactor.node.link import DistributorLink
from jobreactor.node.membership import Membership
from jobreactor.node.persistence import WriteBehind
from jobreactor.node.recovery import Recovery
from jobreactor.node.release import Releaser
from jobreactor.node.settle import Settle
from jobreactor.node.supervisor import Recycler
from jobreactor.node.tasks import Tasks
from jobreactor.node.timetable import Timetable
from jobreactor.protocol import PROTOCOL_VERSION, Command, Hello, Record
from jobreactor.protocol.auth import secret_bytes
from jobreactor.storage.base import Storage

if TYPE_CHECKING:  # imported when used: it needs redis-py
    from jobreactor.node.discovered import Discovered

logger = logging.getLogger("jobreactor.node")


class Node:
    def __init__(  # noqa: PLR0913 (the keyword-only options of start_node)
        self,
        name: str,
        settings: ReactorConfig,
        registry: Registry,
        storage: Storage,
        distributors: list[tuple[str, int]],
        *,
        secret: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        redis_url: str | None = None,
        discovery_url: str | None = None,
        group: str | None = None,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.name = expand_node_name(name)
        self.instance = new_instance_id()  # tells our reconnections from a namesake's
        self.settings = settings
        self.registry = registry
        self.storage = storage
        self.secret = secret_bytes(secret if secret is not None else settings.secret)
        self.group = group if group is not None else settings.group
        self.loop = asyncio.get_running_loop()
        self.metrics = metrics if metrics is not None else JobMetrics()  # its own: no global
        self._ssl = ssl_context
        self._stop_now = asyncio.Event()  # a second signal: stop without waiting for anything
        self._build(redis_url if storage.durable else None)
        for host, port in distributors:
            self.members.add_link(host, port, None, run=False)
        self.metrics.track(self)
        self.metrics.register(registry.names())
        self.discovered = self._discovery(discovery_url or settings.discovery_url)

    def _build(self, batch_redis_url: str | None) -> None:
        """The parts, lowest first; each gets what it works with, nothing more."""
        name, settings, storage = self.name, self.settings, self.storage
        counting = self.metrics if settings.metrics else None
        log_jobs = settings.log_job_processing and logger.isEnabledFor(logging.INFO)
        pool = concurrent.futures.ThreadPoolExecutor(
            settings.thread_pool_size, thread_name_prefix=f"jobreactor-{name}"
        )
        self.tasks = tasks = Tasks(self.loop, name)
        self.holdings = holdings = Holdings(name, storage)
        self.store = store = WriteBehind(name, storage, settings.reconnect_interval, tasks.spawn)
        self.timetable = clock = Timetable(
            self.loop, holdings, settings.concurrency, node_name=name, metrics=counting
        )
        gates = Gates(
            lookup=holdings.jobs.get, make_ready=clock.make_ready, sleep_until=clock.sleep_until,
            park=lambda held: settle.park(held),  # settle is made below (it needs the limits)
            unschedule=holdings.timers.cancel,
        )  # fmt: skip
        self.limits = limits = NodeLimits(
            name, storage, settings.limit_lease, gates=gates, spawn=tasks.spawn, loop=self.loop
        )
        releaser = Releaser(settings, self.registry, storage, limits)
        batches = NodeBatches(self.loop, pool, batch_redis_url)
        self.settle = settle = Settle(
            settings, holdings=holdings, clock=clock, store=store, tasks=tasks, releaser=releaser,
            batches=batches, limits=limits, metrics=counting, log_jobs=log_jobs,
        )  # fmt: skip
        self.attempts = Attempts(
            name, settings, self.registry, settle=settle, store=store, tasks=tasks, pool=pool,
            metrics=counting, log_jobs=log_jobs,
        )  # fmt: skip
        guards = Guards(
            name, settings, self.registry, storage, start=self.attempts.start, settle=settle,
            releaser=releaser, batches=batches, limits=limits, tasks=tasks,
        )  # fmt: skip
        clock.connect(self.attempts.start, guards.needed, guards.begin)
        self._build_session(settings.concurrency + settings.prefetch)

    def _build_session(self, window: int) -> None:
        """The parts that face the distributors and operators."""
        name, settings, storage, tasks = self.name, self.settings, self.storage, self.tasks
        self.intake_state = intake = Intake()
        make_link = functools.partial(
            DistributorLink, self, ssl_context=self._ssl, settings=settings, node_name=name,
            secret=self.secret, intake=intake, running=lambda: self.timetable.running,
        )  # fmt: skip
        self.members = Membership(name, self.holdings, self.store.persist, make_link=make_link)
        self.links = self.members.links
        self.intake = JobIntake(
            name, storage, window=window, retry_every_s=settings.reconnect_interval,
            holdings=self.holdings, timetable=self.timetable, store=self.store,
            links=self.links, intake=intake, spawn=tasks.spawn,
        )  # fmt: skip
        self.control = NodeControl(
            name, intake, pause=self.members.pause, resume=lambda: self.members.resume(
                self.intake.free_credits), stop=self.stop,
            retry_now=self.settle.retry_now,
        )  # fmt: skip
        self.commands = Commands(name, storage, self.control, tasks.spawn)
        self.recovery = Recovery(
            name, storage, holdings=self.holdings, at_epoch=self.timetable.at_epoch,
            links=self.links, limits=self.limits, control=self.control,
        )  # fmt: skip

    def _discovery(self, url: str | None) -> Discovered | None:
        """The registry side of this node (node/discovered.py), with a discovery_url."""
        if not url:
            return None
        from jobreactor.node.discovered import Discovered  # imports redis-py

        return Discovered(
            self.members, url, self.group, settings=self.settings, node_name=self.name,
            secret=self.secret, stats=self.stats, stopping=lambda: self.stopping,
        )  # fmt: skip

    def __repr__(self) -> str:
        holdings = self.holdings
        return (
            f"<Node {self.name} held={len(holdings)} running={self.timetable.running} "
            f"scheduled={len(holdings.timers)} ready={len(holdings.ready)}>"
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.retry_jobs_at_start and self.storage.durable:
            await self.recovery.recover()
        if getattr(self.storage, "commands", None) is not None:
            self.tasks.spawn(self.recovery.listen())
        for link in self.links:
            self.members.run(link)
        if self.discovered is not None:
            await self.discovered.start()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every static link has been welcomed once and discovery has looked once."""
        async with asyncio.timeout(timeout):
            for link in list(self.links):
                await link.ready.wait()
            if self.discovered is not None:
                await self.discovered.watcher.reconciled.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: hand back unstarted jobs, let running ones finish (bounded), close."""
        if self.intake_state.stopping:
            # A second stop (second signal) with a shorter grace tightens the drain now.
            if grace == 0:
                self._stop_now.set()  # and the closing writes stop waiting for the storage
            if grace is not None:
                self.timetable.tighten(grace)
            return
        self.intake_state.stopping = True
        self.timetable.stopped = True  # no new attempts; unstarted jobs are handed back
        grace = self.settings.shutdown_timeout if grace is None else grace
        stop_by = self.loop.time() + grace
        if self.discovered is not None:
            await self.discovered.stop()

        def forget(held: HeldJob) -> None:
            self.settle.forget(held, destroy=True)

        self.intake.hand_back_unstarted(self.limits, forget)
        await self.timetable.wait_idle(grace)
        self.intake.hand_back_unstarted(self.limits, forget)
        await self.tasks.cancel_all(timeout=1.0)
        # Bounded whatever the storage does: shutdown_timeout rules (a second signal: now).
        await self.store.flush_before_stop(max(0.5, stop_by - self.loop.time()), self._stop_now)
        await self.members.stop(reports_within=min(2.0, grace + 0.5))
        self.timetable.close()
        self.limits.close()
        self.attempts.close()
        await self.storage.aclose()
        logger.info("node %s stopped", self.name)

    def close_intake(self) -> None:
        """Take no more jobs (credit 0 on every link); held ones go on (a recycling child)."""
        self.intake_state.set(closed=True)
        self.members.pause()

    def recycle_with(self, recycler: Recycler) -> None:
        """A supervised child: count attempts and memory, and recycle past the limits."""
        self.attempts.recycler = recycler

    # --- what a link asks of its node (link.LinkOwner) --------------------------------------------

    def hello(self, link: DistributorLink, nonce: bytes) -> Hello:
        """Our Hello to `link`'s distributor: what we run, our credit, what we hold from it."""
        settings = self.settings
        return Hello(
            PROTOCOL_VERSION,
            self.name,
            self.registry.names(),
            self.intake.free_credits(link),
            self.storage.kind,
            nonce,
            self.members.held_from(link) + link.reports.unacked_ids(),
            self.instance,
            self.secret is not None,
            settings.concurrency + settings.prefetch,
        )

    def receive_jobs(self, link: DistributorLink, jobs: list[tuple[int, Record]]) -> None:
        self.intake.receive(link, jobs)

    def cancel_job(self, job_id: str) -> None:
        """The distributor cancels this job (JR.cancel)."""
        self.settle.cancel_job(job_id)

    def command(self, link: DistributorLink, command: Command) -> None:
        self.commands.answer(link, command)

    def jobs_dropped(self, link: DistributorLink, drop: list[str], *, settled: bool) -> None:
        """Forget jobs the distributor gave to another node. `settled`: its last answer."""
        for job_id in drop:
            gone = self.holdings.find(job_id)
            if gone is not None:
                gone.dropped = True
                if not gone.running:
                    self.settle.forget(gone, destroy=True)
        link.reports.drop_for(set(drop))
        self.recovery.unpark(link, drop, settled=settled)

    def link_ready(self, link: DistributorLink, drop: list[str], *, settled: bool) -> None:
        """Welcomed: drop what the distributor gave away; run parked jobs once all is settled."""
        self.members.bind_recovered(link)
        self.jobs_dropped(link, drop, settled=settled)
        if self.discovered is not None:
            self.discovered.welcomed(link)
            self.discovered.reroute()

    def link_down(self, link: DistributorLink) -> None:
        """Held jobs go on; their reports wait in the link until it (or another link to the
        same instance) is welcomed."""
        if self.discovered is not None:
            self.discovered.link_down(link)

    def link_tried(self, link: DistributorLink) -> None:
        """`link`'s first dial ended (connected or not)."""
        if self.discovered is not None:
            self.discovered.link_tried(link)

    def instance_mismatch(self) -> None:
        """A discovered address answered as another instance: look at the registry again."""
        if self.discovered is not None:
            self.discovered.watcher.refresh()

    # --- introspection ----------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.intake_state.stopping

    @property
    def held_count(self) -> int:
        return len(self.holdings)

    @property
    def running_count(self) -> int:
        return self.timetable.running

    def peek_record(self, job_id: str) -> JobRecord | None:
        """A held job's record for display (a packed one decoded, left packed)."""
        return self.holdings.peek_record(job_id)

    def scheduled_ids(self, limit: int) -> list[str]:
        """The `limit` soonest scheduled job ids, soonest first (dashboards)."""
        return self.holdings.scheduled_ids(limit)

    def stats(self) -> dict[str, Any]:
        """What this node publishes with its registry beat (and dashboards read)."""
        held = len(self.holdings)
        window = self.settings.concurrency + self.settings.prefetch
        return {
            "name": self.name,
            "group": self.group,
            "storage": self.storage.kind,
            "held": held,
            "scheduled": len(self.holdings.timers),
            "running": self.timetable.running,
            "free_credit": max(0, window - held),
            "distributors": [link.address for link in self.links if link.is_ready],
            "concurrency": self.settings.concurrency,
            "state": self.control.state,
            "limits": self.limits.stats(),
            "metrics": self.metrics.snapshot(),
        }
