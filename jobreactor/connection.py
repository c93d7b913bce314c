"""FramedConnection: the one asyncio.Protocol both ends use to pump frames.

It owns the transport, the FrameDecoder, write coalescing (every frame written during one loop
tick leaves in a single `transport.write`), the heartbeat timer and the close path. What the
messages mean is the owner's business (`ConnectionOwner`): the distributor's node session or
the node's link. Bad input closes this connection only, with one log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from jobreactor.errors import LocalProtocolError, ProtocolVersionMismatch, RemoteProtocolError
from jobreactor.protocol import (
    Bye,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    Message,
    Ping,
    Pong,
    encode,
)
from jobreactor.ratelimit import RateLimitedLog

logger = logging.getLogger("jobreactor.connection")

# A peer silent for this many heartbeat intervals is considered gone.
_SILENT_INTERVALS = 3
# One peer's input is handled for at most this long per loop turn; the rest waits (reading
# paused) until the other callbacks and peers had theirs (issue 18: valid frames in a flood
# held the distributor's loop for seconds).
_SLICE_S: Final = 0.001


class ConnectionOwner(Protocol):
    def on_message(self, message: Message) -> None: ...

    def on_close(self, reason: str) -> None: ...

    def before_flush(self) -> None:
        """Called once per tick before buffered frames leave: add batched messages now."""
        ...


class FramedConnection(asyncio.Protocol):
    def __init__(
        self,
        owner_factory: Callable[[FramedConnection], ConnectionOwner | None],
        *,
        max_frame_bytes: int,
        heartbeat_interval: float,
        label: str,
        warn: RateLimitedLog | None = None,
    ) -> None:
        self._owner_factory = owner_factory
        # Warnings about the peer: a distributor shares one limiter among all its connections,
        # so a flood of bad peers costs a few lines, not one each.
        self.warn = warn if warn is not None else RateLimitedLog(logger, logging.WARNING, 0.0)
        self._owner: ConnectionOwner | None = None
        self._decoder = FrameDecoder(max_frame_bytes)
        self._sealer: FrameSealer | None = None
        self._reading_paused = False
        self._resume_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        # A flush is on its way (read it, don't set it: senders skip asking again).
        self.flush_scheduled = False
        self._flush_handle: asyncio.Handle | None = None
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat: asyncio.TimerHandle | None = None
        self._heard_since_beat = True
        self._silent_beats = 0
        self._sent_since_beat = False
        self._loop = asyncio.get_running_loop()
        self.label = label
        self.closed = asyncio.Event()
        self.peer: str = "?"

    def __repr__(self) -> str:
        state = "CLOSED" if self.closed.is_set() else "OPEN"
        return f"<FramedConnection {self.label} {self.peer} {state}>"

    def restrict(
        self,
        max_frame_bytes: int,
        allowed: frozenset[int] | None,
        kind_bytes: dict[int, int] | None = None,
    ) -> None:
        """Limit the frames accepted from now on (smaller and fewer kinds before the handshake;
        after it, a size bound per kind)."""
        self._decoder.restrict(max_frame_bytes, allowed, kind_bytes)

    def seal_from_now(self, sealer: FrameSealer) -> None:
        """Every frame queued from now on carries a MAC (protocol/mac.py)."""
        self._sealer = sealer

    def open_from_now(self, opener: FrameOpener) -> None:
        """Every frame received after the current one must carry a valid MAC."""
        self._decoder.authenticate(opener)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.is_set()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._owner = self._owner_factory(self)
        if self._owner is None:  # refused (too many handshakes under way): drop it now
            self.closed.set()
            transport.abort()  # type: ignore[attr-defined]
            return
        self._arm_heartbeat()

    def data_received(self, data: bytes) -> None:
        self._heard_since_beat = True
        self._decoder.feed(data)
        if not self._reading_paused:
            self._handle_input()

    def _handle_input(self) -> None:
        """Handle buffered frames for at most _SLICE_S; then pause reading and go on next turn."""
        self._resume_scheduled = False
        self._heard_since_beat = True  # its frames wait here while reading is paused: it is alive
        deadline = time.perf_counter() + _SLICE_S
        messages = self._decoder.messages()
        try:
            for message in messages:
                if self.closed.is_set() or self._owner is None:
                    return
                if isinstance(message, Ping):
                    self.send(Pong())
                elif not isinstance(message, Pong):
                    self._owner.on_message(message)
                if time.perf_counter() > deadline:
                    self._yield_turn()
                    return
        except ProtocolVersionMismatch as exc:  # the message says which side to upgrade
            self.warn("closing %s connection from %s: %s", self.label, self.peer, exc)
            self.close(str(exc), notify=True)  # the peer logs it too
            return
        except RemoteProtocolError as exc:
            self.warn(
                "closing %s connection from %s: %s (a peer with another version, a bug, "
                "or not a jobreactor peer)",
                self.label,
                self.peer,
                exc,
            )
            self.close(str(exc), notify=True)
            return
        finally:
            messages.close()  # keeps what is not handled yet, drops what is
        if self._reading_paused and self._transport is not None and not self.closed.is_set():
            self._reading_paused = False
            self._transport.resume_reading()

    def _yield_turn(self) -> None:
        if self._transport is None or self.closed.is_set():
            return
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        if not self._resume_scheduled:
            self._resume_scheduled = True
            self._loop.call_soon(self._handle_input)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("connection lost" if exc is None else f"connection lost: {exc}")

    # --- writing ----------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        if self._transport is None or self.closed.is_set():
            return
        self._out.append(frame if self._sealer is None else self._sealer.seal(frame))
        self.schedule_flush()

    def schedule_flush(self, delay: float = 0.0) -> None:
        """Flush on the next loop turn, or after `delay` seconds (to gather a few frames in one
        write when more are surely coming, e.g. reports of jobs still running)."""
        if not self.flush_scheduled and not self.closed.is_set():
            self.flush_scheduled = True
            if delay > 0:
                self._flush_handle = self._loop.call_later(delay, self._flush)
            else:
                self._flush_handle = self._loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Write what is queued now rather than at the end of this loop turn: for jobs the
        peer waits for while this turn has more to do (the reports that came with the
        credit). Without it a node sat idle while the distributor ran the feedbacks of the
        reports it had just sent, and the whole credit window went back and forth as one
        batch (docs/decisions.md, issue 20, session 6)."""
        if self.flush_scheduled:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()

    def _flush(self) -> None:
        if self._owner is not None and not self.closed.is_set():
            try:
                # What the owner sends now goes in this write: no second flush is scheduled.
                self._owner.before_flush()
            except LocalProtocolError:
                # The owner failed items one by one where it could; what is queued still goes.
                logger.exception(
                    "%s connection %s: a message could not be encoded", self.label, self.peer
                )
            finally:
                self.flush_scheduled = False
        else:
            self.flush_scheduled = False
        transport = self._transport
        if not self._out or transport is None or self.closed.is_set():
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        if transport.is_closing():  # closed under us (peer reset): nothing can go out
            return
        self._sent_since_beat = True
        transport.write(data)

    # --- heartbeat and closing --------------------------------------------------------------

    def _arm_heartbeat(self) -> None:
        self._heartbeat = self._loop.call_later(self._heartbeat_interval, self._beat)

    def _beat(self) -> None:
        if self.closed.is_set():
            return
        if self._heard_since_beat:
            self._silent_beats = 0
        else:
            self._silent_beats += 1
            if self._silent_beats >= _SILENT_INTERVALS:
                logger.warning(
                    "closing %s connection %s: silent for %.0fs (peer hung or network cut)",
                    self.label,
                    self.peer,
                    self._silent_beats * self._heartbeat_interval,
                )
                self.close("heartbeat timeout")
                return
        self._heard_since_beat = False
        if not self._sent_since_beat:
            self.send(Ping())
        self._sent_since_beat = False
        self._arm_heartbeat()

    def close(self, reason: str, *, notify: bool = False) -> None:
        """Close now. With `notify`, tell the peer why first (best effort)."""
        if self.closed.is_set():
            return
        transport = self._transport
        if transport is not None:
            if notify:
                bye = encode(Bye(reason[:500]))
                self._out.append(bye if self._sealer is None else self._sealer.seal(bye))
            if self._out and not transport.is_closing():
                transport.write(b"".join(self._out))
            self._out.clear()
            transport.close()
        self._finish(reason)

    def abort(self, reason: str) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._out.clear()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.on_close(reason)
