"""DistributorLink: a node's connection to one distributor, kept alive by redialling.

It dials, proves the secret (if any), re-offers the jobs the node still holds from this
distributor, and then carries acknowledgements, credits and reports, coalesced once per loop
tick. The handshake and session rules are handshake.py's (sans I/O); this is their asyncio
shell: it feeds the machine what arrives and does what it answers. Reports survive reconnects:
they stay queued (reports.py) until the distributor acknowledges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from jobreactor.config import ReactorConfig
from jobreactor.connection import FramedConnection
from jobreactor.errors import HandshakeFailed, LocalProtocolError
from jobreactor.node import handshake as hs
from jobreactor.node.control import Intake
from jobreactor.node.reports import ReportQueue
from jobreactor.protocol import (
    MAX_ITEMS_PER_FRAME,
    NONCE_BYTES,
    PRE_AUTH_MAX_FRAME_BYTES,
    Ack,
    Cancel,
    Command,
    Dropped,
    HeldJobs,
    Hello,
    Jobs,
    Message,
    Nack,
    Record,
    ReportsAck,
    Return,
    Welcome,
    encode,
)

logger = logging.getLogger("jobreactor.node")

T = TypeVar("T")

_MAX_BACKOFF_S = 30.0
# How long a busy node lets outgoing frames gather before one write.
_GATHER_S = 0.0002
# Held jobs per Held frame (and leases per Ack, ids per Return): what the distributor accepts
# in one frame, a bounded amount of work for its loop.
_HELD_PER_FRAME = MAX_ITEMS_PER_FRAME


class LinkOwner(Protocol):
    """What a link needs of its node (node.py): the node's side of each session event."""

    def hello(self, link: DistributorLink, nonce: bytes) -> Hello:
        """Our Hello to this link's distributor, listing every job held from it (the link
        sends those that do not fit in Held frames after the welcome)."""

    def receive_jobs(self, link: DistributorLink, jobs: list[tuple[int, Record]]) -> None: ...

    def cancel_job(self, job_id: str) -> None: ...

    def command(self, link: DistributorLink, command: Command) -> None: ...

    def jobs_dropped(self, link: DistributorLink, drop: list[str], *, settled: bool) -> None: ...

    def link_ready(self, link: DistributorLink, drop: list[str], *, settled: bool) -> None: ...

    def link_down(self, link: DistributorLink) -> None: ...

    def link_tried(self, link: DistributorLink) -> None: ...

    def instance_mismatch(self) -> None: ...


class DistributorLink:
    def __init__(  # noqa: PLR0913 (what a link is made of, by name)
        self,
        owner: LinkOwner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        settings: ReactorConfig,
        node_name: str,
        secret: bytes | None,
        intake: Intake,
        running: Callable[[], int],
    ) -> None:
        self._owner = owner
        self.host = host
        self.port = port
        self.configured = f"{host}:{port}"
        self.address = self.configured  # replaced by the distributor's advertised address
        self.instance = ""  # the distributor's instance id, from its last Welcome
        self._ssl = ssl_context
        self._settings = settings
        self._node_name = node_name
        self._intake = intake
        self._running = running  # the node's running attempts (a busy node gathers writes)
        self.handshake = hs.NodeHandshake(
            node_name, secret, settings.handshake_timeout, self.configured
        )
        self.conn: FramedConnection | None = None
        self._acks: list[int] = []
        self._credits = 0
        self._nacks: list[Nack] = []
        self.reports = ReportQueue(self._flush_soon, settings.max_frame_bytes)
        self.report = self.reports.report  # per job: no hop through the link
        self._stop = asyncio.Event()
        self._more_held: list[tuple[str, int]] = []
        self._timer: asyncio.TimerHandle | None = None  # the handshake's deadline
        self.ready = asyncio.Event()
        self.tried = False  # its first dial is over, connected or not
        self.peer = ""  # "ip:port" its last connection reached

    def __repr__(self) -> str:
        return f"<DistributorLink {self.configured} {self.handshake.phase.name}>"

    @property
    def is_ready(self) -> bool:
        return self.handshake.phase is hs.Phase.READY

    @property
    def unacked_reports(self) -> int:
        return len(self.reports)

    # --- the dial loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Dial, serve, redial with backoff, until `stop()`."""
        backoff = self._settings.reconnect_interval
        while not self._stop.is_set():
            try:
                await self._connect_once()
                if self.handshake.welcomed:  # a refused handshake keeps backing off
                    backoff = self._settings.reconnect_interval
            except (OSError, TimeoutError) as exc:
                logger.info(
                    "Searching for distributor %s: %s; retrying in %.1fs",
                    self.configured,
                    exc,
                    backoff,
                )
            except LocalProtocolError as exc:  # our Hello can't be sent: say so, keep trying
                logger.error("%s; retrying in %.1fs", exc, backoff)
            if self._stop.is_set():
                return
            busy = self.handshake.busy
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), hs.busy_retry_delay() if busy else backoff
                )
            if not busy:
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self._settings

        def factory() -> FramedConnection:
            return FramedConnection(
                self._attach,
                max_frame_bytes=settings.max_frame_bytes,
                heartbeat_interval=settings.heartbeat_interval,
                label="distributor",
            )

        self.handshake.welcomed = self.handshake.busy = False
        try:
            async with asyncio.timeout(settings.handshake_timeout * 2):
                _, conn = await loop.create_connection(factory, self.host, self.port, ssl=self._ssl)
        finally:
            if not self.tried:
                self.tried = True
                self._owner.link_tried(self)
        self.conn, self.peer = conn, conn.peer
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.handshake.connect(time.monotonic(), nonce)
        hello = self._owner.hello(self, nonce)
        try:
            frame, self._more_held = hs.hello_frame(hello, hello.held)
            conn.send_frame(frame)
        except LocalProtocolError:
            conn.close("our Hello does not fit")
            raise
        self._poll_at(settings.handshake_timeout)
        try:
            await conn.closed.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _poll_at(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._poll)

    def _poll(self) -> None:
        """The handshake's deadline passed (or nearly: loop timers may fire early): let the
        machine say what that means."""
        self._timer = None
        for action in self.handshake.poll(time.monotonic()):
            if isinstance(action, hs.Close) and self.conn is not None:
                logger.warning("distributor %s did not welcome us in time", self.configured)
                self.conn.close(action.reason)
        deadline = self.handshake.deadline
        if deadline is not None and self.conn is not None:
            self._poll_at(max(0.001, deadline - time.monotonic()))

    def _attach(self, conn: FramedConnection) -> DistributorLink:
        conn.restrict(PRE_AUTH_MAX_FRAME_BYTES, hs.PRE_WELCOME_TAGS)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.conn is not None:
            self.conn.close("node stopping", notify=True)

    # --- ConnectionOwner ------------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        try:
            actions = self.handshake.receive(message, time.monotonic())
        except HandshakeFailed:
            if self.handshake.mismatch:
                self._owner.instance_mismatch()
            raise
        for action in actions:
            self._do(action)

    def _do(self, action: hs.Action) -> None:
        owner, conn = self._owner, self.conn
        match action:
            case hs.Deliver(message=Jobs() as jobs):
                owner.receive_jobs(self, jobs.jobs)
            case hs.Deliver(message=ReportsAck() as ack):
                self.reports.acked(ack.upto_seq)
            case hs.Deliver(message=Cancel() as cancel):
                owner.cancel_job(cancel.job_id)
            case hs.Deliver(message=Command() as command):
                owner.command(self, command)
            case hs.Deliver(message=Dropped() as dropped):
                owner.jobs_dropped(self, dropped.drop, settled=dropped.last)
            case hs.Send(message) if conn is not None:
                conn.send(message)
            case hs.Secure(sealer, opener) if conn is not None:
                conn.seal_from_now(sealer)
                conn.open_from_now(opener)
            case hs.Admitted(welcome, was):
                self._admitted(welcome, was)
            case hs.Refused(reason, busy):
                self._refused(reason, busy)
            case hs.Leaving(reason):
                # A distributor stopping (an app's JR.stop(), a deploy) is routine: INFO.
                logger.info("distributor %s is closing the link: %s", self.configured, reason)
                if conn is not None:
                    conn.close("distributor said goodbye")

    def _admitted(self, welcome: Welcome, was: str) -> None:
        conn = self.conn
        assert conn is not None
        conn.restrict(self._settings.max_frame_bytes, None)
        self.address = self.reports.address = welcome.distributor
        if was:
            logger.info(
                "distributor %s is a new instance (%s, was %s)",
                self.configured,
                welcome.instance,
                was,
            )
        self.instance = welcome.instance
        more, self._more_held = self._more_held, []
        chunks = _chunks(more)  # before any re-routed `Held`: its `Dropped` settles parked jobs
        for i, chunk in enumerate(chunks):
            conn.send(HeldJobs(chunk, i == len(chunks) - 1))
        self._owner.link_ready(self, welcome.drop, settled=not more)
        self.reports.resend_all()  # everything unacknowledged goes again, in order
        self._flush_soon()
        self.ready.set()
        logger.info("%s ready to work with distributor %s", self._node_name, self.address)

    def _refused(self, reason: str, busy: bool) -> None:
        """The distributor refused us during the handshake. Say why, loudly; the dial loop
        keeps backing off (the rate of these lines is bounded by it)."""
        if busy:
            logger.warning(
                "distributor %s is busy with other handshakes (maybe a flood of anonymous "
                "connections) and turned node %r away; retrying in a moment",
                self.configured,
                self._node_name,
            )
        else:
            logger.error(
                "distributor %s refused node %r: %s (retrying with backoff)",
                self.configured,
                self._node_name,
                reason,
            )
        if self.conn is not None:
            self.conn.close("refused by the distributor" + (": busy" if busy else ""))

    def on_close(self, reason: str) -> None:
        was_ready, goodbye = self.handshake.closed()
        self.ready.clear()
        self._acks.clear()
        self._nacks.clear()
        self._credits = 0
        self.conn = None
        if was_ready and not self._stop.is_set():
            # Unexpected, or reports still unacknowledged (they may never reach the app): WARNING.
            level = logging.INFO if goodbye and not len(self.reports) else logging.WARNING
            logger.log(
                level,
                "lost distributor %s (%s); redialling, %d report(s) kept for it",
                self.configured,
                reason,
                len(self.reports),
            )
        self._owner.link_down(self)

    def before_flush(self) -> None:
        conn = self.conn
        if conn is None or not self.is_ready:
            return
        if self._acks or self._credits:
            chunks = _chunks(self._acks)
            for chunk in chunks[:-1]:
                conn.send_frame(encode(Ack(chunk, 0)))
            conn.send_frame(encode(Ack(chunks[-1] if chunks else [], self._credits)))
            self._acks = []
            self._credits = 0
        for nack in self._nacks:
            conn.send_frame(encode(nack))
        self._nacks.clear()
        self.reports.send(conn)

    # --- what the node sends --------------------------------------------------------------------

    def _flush_soon(self) -> None:
        conn = self.conn  # 3 calls a job: one already on its way is the usual case
        if conn is not None and not conn.flush_scheduled and self.is_ready:
            # While jobs run, more acks, credits and reports are moments away: one write for
            # them all (a write per report was 15 % of a node's CPU on the peers' async body,
            # py-spy, issue 13). An idle node writes at once (latency).
            conn.schedule_flush(_GATHER_S if self._running() else 0.0)

    def ack(self, lease: int, credit: bool) -> None:
        self._acks.append(lease)
        if credit and not self._intake.shut:
            self._credits += 1
        self._flush_soon()

    def grant(self, credits: int = 1) -> None:
        if self._intake.shut:
            # An operator quieted the node (node/control.py), or it is recycling:
            # it drains what it holds and no credit goes out.
            return
        self._credits += credits
        self._flush_soon()

    def nack(self, lease: int, reason: str) -> None:
        self._nacks.append(Nack(lease, reason))
        self._flush_soon()

    def pause(self) -> None:
        """Take no more jobs for now: the distributor sets our credit to 0 (a `Return`)."""
        self._credits = 0
        self.send(Return([]))

    def send(self, message: Message) -> bool:
        """Send `message` now if the session is up; False if it could not leave."""
        if self.conn is None or not self.is_ready:
            return False
        self.conn.send(message)
        return True

    def hand_back(self, job_ids: list[str]) -> None:
        for chunk in _chunks(job_ids):
            self.send(Return(chunk))

    def send_held(self, held: list[tuple[str, int]], origin: str) -> None:
        """Tell the distributor these are all the jobs we hold (or have unacknowledged reports
        of) from instance `origin`, re-routed to it; it answers `Dropped`. Sent even when empty:
        the adopter requeues what it thought we had from there."""
        chunks = _chunks(held) or [[]]
        for i, chunk in enumerate(chunks):
            self.send(HeldJobs(chunk, i == len(chunks) - 1, origin))

    async def wait_reports_acked(self, timeout: float) -> bool:
        """Until every report is acknowledged, the link drops, or `timeout` passes."""
        conn = self.conn
        if conn is None or not self.is_ready:
            return not len(self.reports)
        return await self.reports.wait_acked(conn.closed, timeout)


def _chunks(items: list[T]) -> list[list[T]]:
    """`items` in frames of at most _HELD_PER_FRAME."""
    return [items[i : i + _HELD_PER_FRAME] for i in range(0, len(items), _HELD_PER_FRAME)]
