"""Framing, sans I/O: a frame is a 4-byte big-endian length, then one msgpack body.

The length is checked against `max_frame_bytes` (much smaller before the handshake) *before*
the body is buffered. `FrameDecoder` never reads from anything itself: bytes in, messages out.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Generator
from typing import Final, TypeVar

import msgpack

from jobreactor.errors import FrameTooLarge, InvalidArgs, LocalProtocolError, MalformedFrame
from jobreactor.protocol.decoding import decode_body, peek_tag
from jobreactor.protocol.mac import MAC_BYTES, FrameOpener
from jobreactor.protocol.messages import DEFAULT_MAX_FRAME_BYTES, Message, Record

_LENGTH: Final = struct.Struct(">I")
T = TypeVar("T")


class _Packers(threading.local):
    # One msgpack Packer per thread, reused (packb makes one per call: 4x the cost of a small
    # frame). A Packer is not thread-safe; it resets itself after a failed pack.
    def __init__(self) -> None:
        self.pack = msgpack.Packer(use_bin_type=True).pack


_PACKERS: Final = _Packers()


def encode(message: Message) -> bytes:
    """One frame: length header + msgpack body (the array `to_wire` generated from the schema)."""
    try:
        body: bytes = _PACKERS.pack(message.to_wire())
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from exc
    return _LENGTH.pack(len(body)) + body


def encode_split(
    items: list[T],
    build: Callable[[list[T]], Message],
    limit: int,
    shrink: Callable[[T], T] | None = None,
) -> list[bytes]:
    """Frames carrying `items`, halved until each body fits `limit` (the peer's max_frame_bytes).

    One item too big on its own is passed through `shrink` (or is a LocalProtocolError): a
    frame the peer must refuse would only close the connection and come back forever.
    """
    frame = encode(build(items))
    if len(frame) - _LENGTH.size <= limit:
        return [frame]
    if len(items) == 1:
        if shrink is None:
            raise LocalProtocolError(f"one item needs {len(frame)} bytes, over {limit}")
        return [encode(build([shrink(items[0])]))]
    middle = len(items) // 2
    return encode_split(items[:middle], build, limit, shrink) + encode_split(
        items[middle:], build, limit, shrink
    )


def pack_args(args: Record) -> bytes:
    """Check that `args` can cross the wire; raise InvalidArgs (a TypeError) naming the problem."""
    try:
        return msgpack.packb(args, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgs(
            "job args must be plain data (dict, list, str, int in -2**63..2**64-1, float, bool, "
            f"None, bytes): {exc}"
        ) from None


class FrameDecoder:
    """Turns a byte stream into messages.

    Feed it whatever the socket returned, in pieces of any size, then drain `messages()`.
    It never reads from anything itself. After it raised, the stream is unusable: close it.
    A frame whose kind is not allowed, or over that kind's size bound, is refused as soon as
    its first bytes are in: nothing more of it is buffered or unpacked.
    """

    def __init__(
        self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, allowed: frozenset[int] | None = None
    ) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes
        self._allowed = allowed
        self._kind_bytes: dict[int, int] = {}
        self._opener: FrameOpener | None = None

    def restrict(
        self,
        max_frame_bytes: int,
        allowed: frozenset[int] | None,
        kind_bytes: dict[int, int] | None = None,
    ) -> None:
        """From the next frame on: this size limit, only these tags (None: any), and for the
        kinds in `kind_bytes` a smaller size bound each."""
        self._max_frame_bytes = max_frame_bytes
        self._allowed = allowed
        self._kind_bytes = kind_bytes or {}

    def authenticate(self, opener: FrameOpener) -> None:
        """From the next frame on, every body ends with a MAC tag, checked and stripped."""
        self._opener = opener

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def _check_head(self, size: int, start: int) -> bool:
        """Bounds known from the header (and the tag, once its bytes are in). False: wait."""
        tagged = MAC_BYTES if self._opener is not None else 0
        if size > self._max_frame_bytes + tagged:  # checked before the body arrives
            raise FrameTooLarge(size, self._max_frame_bytes)
        if self._allowed is None and not self._kind_bytes:
            return True
        head = bytes(self._buffer[start + _LENGTH.size : start + _LENGTH.size + 6])
        if len(head) < min(6, size):
            return False
        tag = peek_tag(head)
        if self._allowed is not None and tag not in self._allowed:
            raise MalformedFrame(f"message tag {tag} is not allowed from this peer now")
        bound = self._kind_bytes.get(tag)
        if bound is not None and size > bound + tagged:
            raise MalformedFrame(f"a frame of kind {tag} may not exceed {bound} bytes ({size})")
        return True

    def messages(self) -> Generator[Message, None, None]:
        """Yield every complete message buffered so far; keep the remainder."""
        buffer = self._buffer
        start = 0
        try:
            # The limits are re-read per frame: a message (Welcome, Auth) may lift them.
            while len(buffer) - start >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, start)
                if not self._check_head(size, start):
                    break
                end = start + _LENGTH.size + size
                if len(buffer) < end:
                    break
                body = bytes(buffer[start + _LENGTH.size : end])
                start = end
                if self._opener is not None:
                    body = self._opener.open(body)
                yield decode_body(body, self._allowed)
        finally:
            if start:
                del buffer[:start]
