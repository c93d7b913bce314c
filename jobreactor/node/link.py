"""DistributorLink: a node's connection to one distributor, kept alive by redialling.

It dials, proves the secret (if any), re-offers the jobs the node still holds from this
distributor, and then carries acknowledgements, credits and reports, coalesced once per loop
tick. Reports survive reconnects: they stay queued until the distributor acknowledges them
(the Ruby gem's report lock got stuck after a disconnect; ours is reset and flushed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections import deque
from enum import Enum
from typing import TYPE_CHECKING

from jobreactor.connection import FramedConnection
from jobreactor.errors import HandshakeFailed, LocalProtocolError, RemoteProtocolError
from jobreactor.node import commands
from jobreactor.node.handshake import answer_challenge, busy_retry_delay, hello_frame
from jobreactor.node.reports import Reporting
from jobreactor.protocol import (
    MAX_ITEMS_PER_FRAME,
    NONCE_BYTES,
    PRE_AUTH_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Cancel,
    Challenge,
    Command,
    Dropped,
    HeldJobs,
    Jobs,
    Message,
    Nack,
    Ping,
    Pong,
    ReportItem,
    ReportsAck,
    Return,
    Welcome,
    encode,
)

if TYPE_CHECKING:
    from jobreactor.node.node import Node

logger = logging.getLogger("jobreactor.node")

_MAX_BACKOFF_S = 30.0
# How long a busy node lets outgoing frames gather before one write.
_GATHER_S = 0.0002
# Held jobs per Held frame (and leases per Ack, ids per Return): what the distributor accepts
# in one frame, a bounded amount of work for its loop.
_HELD_PER_FRAME = MAX_ITEMS_PER_FRAME
# What the distributor may send before it welcomed us.
_PRE_WELCOME_TAGS = frozenset({Challenge.TAG, Welcome.TAG, Bye.TAG, Ping.TAG, Pong.TAG})


class LinkPhase(Enum):
    DOWN = "down"
    AWAIT_WELCOME = "await welcome"
    READY = "ready"


class DistributorLink(Reporting):
    def __init__(self, node: Node, host: str, port: int, ssl_context: ssl.SSLContext | None):
        self.node = node
        self.host = host
        self.port = port
        self.configured = f"{host}:{port}"
        self.address = self.configured  # replaced by the distributor's advertised address
        self.instance = ""  # the distributor's instance id, from its last Welcome
        self.previous_instance = ""  # the one before, when a Welcome brought a new one
        # Set for a link found by discovery: the instance the registry lists at this address.
        self.expected_instance: str | None = None
        self._ssl = ssl_context
        self.phase = LinkPhase.DOWN
        self.conn: FramedConnection | None = None
        self._nonce = b""
        self._acks: list[int] = []
        self._credits = 0
        self._nacks: list[Nack] = []
        self._reports: deque[tuple[int, ReportItem]] = deque()  # sent or not, unacknowledged
        self._unsent_from = 0  # index into _reports of the first report not yet sent
        self._seq = 0
        self._stop = asyncio.Event()
        self._challenged = False
        self._was_welcomed = False
        self._busy = False  # the last refusal was "busy": dial again soon
        self._goodbye = False  # the distributor said Bye before this connection closed
        self._more_held: list[tuple[str, int]] = []
        self.ready = asyncio.Event()
        self.tried = False  # its first dial is over, connected or not
        self.peer = ""  # "ip:port" its last connection reached
        self._reports_drained = asyncio.Event()
        self._reports_drained.set()
        self.outcome_lost = False  # its distributor left without a journal (memory storage)

    def __repr__(self) -> str:
        return f"<DistributorLink {self.configured} {self.phase.name}>"

    @property
    def is_ready(self) -> bool:
        return self.phase is LinkPhase.READY

    # --- the dial loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Dial, serve, redial with backoff, until `stop()`."""
        backoff = self.node.settings.reconnect_interval
        while not self._stop.is_set():
            try:
                await self._connect_once()
                if self._was_welcomed:  # a refused handshake keeps backing off (no flapping)
                    backoff = self.node.settings.reconnect_interval
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
            wait = busy_retry_delay() if self._busy else backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
            if not self._busy:
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.node.settings

        def factory() -> FramedConnection:
            return FramedConnection(
                self._attach,
                max_frame_bytes=settings.max_frame_bytes,
                heartbeat_interval=settings.heartbeat_interval,
                label="distributor",
            )

        self._was_welcomed = False
        self._challenged = False
        self._busy = False
        try:
            async with asyncio.timeout(settings.handshake_timeout * 2):
                _, conn = await loop.create_connection(factory, self.host, self.port, ssl=self._ssl)
        finally:
            self._first_try_over()
        self.conn = conn
        self.peer = conn.peer
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        self.phase = LinkPhase.AWAIT_WELCOME
        try:
            frame, self._more_held = hello_frame(self, self._nonce)
            conn.send_frame(frame)
        except LocalProtocolError:
            conn.close("our Hello does not fit")
            raise
        try:
            async with asyncio.timeout(settings.handshake_timeout):
                await self.ready.wait()
        except TimeoutError:
            if not conn.closed.is_set():
                logger.warning("distributor %s did not welcome us in time", self.configured)
                conn.close("handshake timeout")
        await conn.closed.wait()

    def _first_try_over(self) -> None:
        if not self.tried:
            self.tried = True
            self.node.link_tried(self)

    def _attach(self, conn: FramedConnection) -> DistributorLink:
        conn.restrict(PRE_AUTH_MAX_FRAME_BYTES, _PRE_WELCOME_TAGS)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.conn is not None:
            self.conn.close("node stopping", notify=True)

    # --- ConnectionOwner ------------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        match message:
            case Challenge() if self.phase is LinkPhase.AWAIT_WELCOME:
                self._on_challenge(message)
            case Welcome() if self.phase is LinkPhase.AWAIT_WELCOME:
                self._on_welcome(message)
            case Jobs() if self.is_ready:
                self.node.receive_jobs(self, message.jobs)
            case ReportsAck() if self.is_ready:
                self._on_reports_ack(message.upto_seq)
            case Cancel() if self.is_ready:
                self.node.cancel_job(message.job_id)
            case Command() if self.is_ready:
                commands.answer(self.node, self, message)
            case Dropped() if self.is_ready:
                self.node.jobs_dropped(self, message.drop, settled=message.last)
            case Bye() if self.phase is LinkPhase.AWAIT_WELCOME:
                self._refused(message.reason)
            case Bye():
                # A distributor stopping (an app's JR.stop(), a deploy) is routine: INFO.
                logger.info(
                    "distributor %s is closing the link: %s", self.configured, message.reason
                )
                self._goodbye = True
                if self.conn is not None:
                    self.conn.close("distributor said goodbye")
            case _:
                raise RemoteProtocolError(
                    f"{type(message).__name__} is not allowed in phase {self.phase.value}"
                )

    def _on_challenge(self, challenge: Challenge) -> None:
        secret = self.node.secret
        if secret is None:
            raise HandshakeFailed(
                f"distributor {self.configured} requires a secret; set `secret` on this node"
            )
        assert self.conn is not None
        self._challenged = answer_challenge(
            self.conn, secret, self.node.name, self._nonce, challenge
        )

    def _on_welcome(self, welcome: Welcome) -> None:
        if self.node.secret is not None and not self._challenged:
            raise HandshakeFailed(
                f"distributor {self.configured} admitted us without proving the secret; "
                "refusing an unauthenticated distributor: check that both sides have the same "
                "secret"
            )
        self._challenged = False
        if welcome.version != PROTOCOL_VERSION:
            raise HandshakeFailed(
                f"distributor {self.configured} speaks protocol {welcome.version}, we speak "
                f"{PROTOCOL_VERSION}: upgrade the older side"
            )
        expected = self.expected_instance
        if expected is not None and welcome.instance != expected:
            self.node.instance_mismatch()
            raise HandshakeFailed(
                f"distributor {self.configured} is instance {welcome.instance!r} but the registry "
                f"lists {expected!r} there (a recycled port?); not working with it"
            )
        self._was_welcomed = True
        assert self.conn is not None
        self.conn.restrict(self.node.settings.max_frame_bytes, None)
        self.address = welcome.distributor
        if welcome.instance != self.instance:
            if self.instance:
                logger.info(
                    "distributor %s is a new instance (%s, was %s)",
                    self.configured,
                    welcome.instance,
                    self.instance,
                )
            self.previous_instance, self.instance = self.instance, welcome.instance
        self.phase = LinkPhase.READY
        more, self._more_held = self._more_held, []
        for start in range(0, len(more), _HELD_PER_FRAME):  # before any re-routed `Held`:
            last = start + _HELD_PER_FRAME >= len(more)  # its `Dropped` settles our parked jobs
            self.conn.send(HeldJobs(more[start : start + _HELD_PER_FRAME], last))
        self.node.link_ready(self, welcome.drop, settled=not more)
        # Everything unacknowledged goes again, in order, on the new connection.
        self._unsent_from = 0
        self._flush_soon()
        self.ready.set()
        logger.info("%s ready to work with distributor %s", self.node.name, self.address)

    def _refused(self, reason: str) -> None:
        """The distributor said Bye during the handshake: it refused us. Say why, loudly; the
        dial loop keeps backing off (the rate of these lines is bounded by it)."""
        if reason.startswith("busy"):
            self._busy = True
            logger.warning(
                "distributor %s is busy with other handshakes (maybe a flood of anonymous "
                "connections) and turned node %r away; retrying in a moment",
                self.configured,
                self.node.name,
            )
            if self.conn is not None:
                self.conn.close("refused by the distributor: busy")
            return
        if reason.startswith("bad secret"):
            reason = "the distributor refused our proof: check that both sides have the same secret"
        logger.error(
            "distributor %s refused node %r: %s (retrying with backoff)",
            self.configured,
            self.node.name,
            reason,
        )
        if self.conn is not None:
            self.conn.close("refused by the distributor")

    def on_close(self, reason: str) -> None:
        was_ready = self.is_ready
        self.phase = LinkPhase.DOWN
        self.ready.clear()
        self._acks.clear()
        self._nacks.clear()
        self._credits = 0
        self.conn = None
        goodbye, self._goodbye = self._goodbye, False
        if was_ready and not self._stop.is_set():
            # Unexpected, or reports still unacknowledged (they may never reach the app): WARNING.
            level = logging.INFO if goodbye and not self._reports else logging.WARNING
            logger.log(
                level,
                "lost distributor %s (%s); redialling, %d report(s) kept for it",
                self.configured,
                reason,
                len(self._reports),
            )
        self.node.link_down(self)

    def before_flush(self) -> None:
        conn = self.conn
        if conn is None or not self.is_ready:
            return
        if self._acks or self._credits:
            acks = self._acks
            chunks = [acks[i : i + _HELD_PER_FRAME] for i in range(0, len(acks), _HELD_PER_FRAME)]
            for chunk in chunks[:-1]:
                conn.send_frame(encode(Ack(chunk, 0)))
            conn.send_frame(encode(Ack(chunks[-1] if chunks else [], self._credits)))
            self._acks = []
            self._credits = 0
        for nack in self._nacks:
            conn.send_frame(encode(nack))
        self._nacks.clear()
        self._send_reports(conn)

    # --- what the node sends --------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if self.conn is not None and self.is_ready:
            # While jobs run, more acks, credits and reports are moments away: one write for
            # them all (a write per report was 15 % of a node's CPU on the peers' async body,
            # py-spy, issue 13). An idle node writes at once (latency).
            self.conn.schedule_flush(_GATHER_S if self.node.running_count else 0.0)

    def ack(self, lease: int, credit: bool) -> None:
        self._acks.append(lease)
        if credit and not (self.node.control.quiet or self.node.intake_closed):
            self._credits += 1
        self._flush_soon()

    def grant(self, credits: int = 1) -> None:
        if self.node.control.quiet or self.node.intake_closed:
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
        if self.conn is not None and self.is_ready:
            self.conn.send(Return([]))

    def hand_back(self, job_ids: list[str]) -> None:
        if self.conn is not None and self.is_ready and job_ids:
            for start in range(0, len(job_ids), _HELD_PER_FRAME):
                self.conn.send(Return(job_ids[start : start + _HELD_PER_FRAME]))

    def send_held(self, held: list[tuple[str, int]], origin: str) -> None:
        """Tell the distributor these are all the jobs we hold (or have unacknowledged reports
        of) from instance `origin`, re-routed to it; it answers `Dropped`. Sent even when empty:
        the adopter requeues what it thought we had from there."""
        if self.conn is None or not self.is_ready:
            return
        for start in range(0, max(1, len(held)), _HELD_PER_FRAME):
            last = start + _HELD_PER_FRAME >= len(held)
            self.conn.send(HeldJobs(held[start : start + _HELD_PER_FRAME], last, origin))
