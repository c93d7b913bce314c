"""Decoding, sans I/O: a frame body becomes a checked message, or MalformedFrame.

The tag is read before unpacking, so a kind not allowed yet is refused unread; so is the
protocol version of a hello (an "upgrade" error, whatever the rest of that peer's hello looks
like); msgpack is unpacked with limits per message kind, no ext types are trusted, and every
field is type- and range-checked by the decoder generated from the message's declaration
(schema.py), so nothing malformed reaches the distributor or the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgpack

from jobreactor.errors import MalformedFrame
from jobreactor.protocol.messages import CODECS, Message
from jobreactor.protocol.schema import Decoder, Limits, Version


def _reject_ext(code: int, data: bytes) -> Any:
    raise MalformedFrame(f"msgpack ext type {code} is not allowed")


# msgpack limits per message kind, applied *before* unpacking (msgpack checks each container's
# and string's announced length against them), derived from the kinds of its fields: kinds
# that carry no map, string or bytes get 0, so a frame of a few bytes per item can't expand
# into millions of Python objects there; only Jobs, Reports and CommandResult carry job args
# (user data) and keep limits derived from the frame size (UNBOUNDED).
_KIND_LIMITS: Final[dict[int, Limits]] = {tag: codec.limits for tag, codec in CODECS.items()}
_DECODERS: Final[dict[int, Decoder]] = {tag: codec.decode for tag, codec in CODECS.items()}
_VERSIONS: Final[dict[int, Version]] = {
    tag: codec.version for tag, codec in CODECS.items() if codec.version is not None
}
# Kinds that carry no job args: no map at all (refused at the first one, empty or not), and at
# most one array per 4 bytes of frame, so their frames can't become ~60x their size in objects.
ARGS_KINDS: Final = frozenset(tag for tag, limits in _KIND_LIMITS.items() if limits[3] != 0)


def _no_maps(value: Any) -> Any:
    raise MalformedFrame("this message kind carries no maps")


def _array_budget(size: int) -> Callable[[list[Any]], list[Any]]:
    left = size // 4 + 4

    def count(value: list[Any]) -> list[Any]:
        nonlocal left
        left -= 1
        if left < 0:
            raise MalformedFrame("more arrays than a frame of this size and kind can hold")
        return value

    return count


# Where the tag sits after each msgpack array header: fixarray, array 16, array 32.
_TAG_OFFSET: Final = {0xDC: 3, 0xDD: 5}


_unpackb: Final = msgpack.unpackb
_UNPACK: Final[dict[str, Any]] = {
    "raw": False,
    "use_list": True,
    "strict_map_key": False,
    # ext types are refused outright, except timestamps (ext -1, decoded by msgpack itself),
    # which become float seconds.
    "ext_hook": _reject_ext,
    "timestamp": 1,
}


def _tag_at(body: bytes) -> tuple[int, int]:
    """(message tag, its offset) of a frame body, read without unpacking it."""
    if not body:
        raise MalformedFrame("empty frame body")
    head = body[0]
    offset = 1 if 0x91 <= head <= 0x9F else _TAG_OFFSET.get(head, 0)
    if not offset or len(body) <= offset:
        raise MalformedFrame("a frame must be a msgpack array starting with a message tag")
    if body[offset] > 0x7F:  # every tag is a positive fixint
        raise MalformedFrame(f"unknown message tag (byte {body[offset]:#x})")
    return body[offset], offset


def peek_tag(body: bytes) -> int:
    """The message tag of a frame body, read from its first bytes without unpacking it."""
    return _tag_at(body)[0]


def _check_version(body: bytes, offset: int, version: Version) -> None:
    """A hello's version, read before anything else of it: another version's hello may have
    another layout (or limits), and must still get the "upgrade" error, not "malformed"."""
    if len(body) > offset + 1 and body[offset + 1] <= 0x7F:  # a positive fixint
        version.check(body[offset + 1], "protocol version")
    # anything else is not a version any jobreactor sends: the decoder calls it malformed


def decode_body(body: bytes, allowed: frozenset[int] | None = None) -> Message:
    """Decode one frame body (without its length header) into a checked message.

    `allowed`: the tags acceptable now (the phase); any other is refused before unpacking.
    """
    tag, offset = _tag_at(body)
    limits = _KIND_LIMITS.get(tag)
    if limits is None:
        raise MalformedFrame(f"unknown message tag {tag!r}")
    if allowed is not None and tag not in allowed:
        raise MalformedFrame(f"message tag {tag} is not allowed before the handshake")
    version = _VERSIONS.get(tag)
    if version is not None:
        _check_version(body, offset, version)
    size = len(body)
    try:
        if tag in ARGS_KINDS:
            obj = _unpackb(
                body,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=size,
                max_map_len=size,
                max_ext_len=size,
                **_UNPACK,
            )
        else:
            max_str, max_bin, max_array, _ = limits
            obj = _unpackb(
                body,
                max_str_len=max_str,
                max_bin_len=max_bin,
                max_array_len=size if max_array < 0 else max_array,
                max_map_len=0,
                max_ext_len=size,
                object_hook=_no_maps,
                list_hook=_array_budget(size),
                **_UNPACK,
            )
    except MalformedFrame:
        raise
    except Exception as exc:  # noqa: BLE001 (msgpack raises many types on garbage)
        raise MalformedFrame(f"undecodable frame body: {type(exc).__name__}: {exc}") from None
    if type(obj) is not list or not obj or obj[0] != tag:
        raise MalformedFrame("a frame must be a msgpack array starting with a message tag")
    return _DECODERS[tag](obj)  # type: ignore[no-any-return]
