"""Decoding, sans I/O: a frame body becomes a checked message, or MalformedFrame.

The tag is read before unpacking, so a kind not allowed yet is refused unread; msgpack is
unpacked with limits per message kind, no ext types are trusted, and every field is type- and
range-checked here, so nothing malformed reaches the distributor or the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgpack

from jobreactor.errors import MalformedFrame
from jobreactor.protocol.messages import (
    COMMAND_OPS,
    MAX_HELD_IN_HELLO,
    MAX_ITEMS_PER_FRAME,
    MAX_JOB_NAMES,
    MAX_NAME_CHARS,
    MAX_WIRE_INT,
    NONCE_BYTES,
    OUTCOMES,
    Ack,
    Auth,
    Bye,
    Cancel,
    Challenge,
    Command,
    CommandResult,
    Dropped,
    Held,
    Hello,
    Jobs,
    Message,
    Nack,
    Ping,
    Pong,
    Record,
    ReportItem,
    Reports,
    ReportsAck,
    Return,
    Welcome,
)

# --- decoding: every field is checked here, so the rest of the code can trust messages ------


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedFrame(f"{what} must be a list of strings")
    return value


def _int_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(
        type(v) is int and 0 <= v <= MAX_WIRE_INT for v in value
    ):
        raise MalformedFrame(f"{what} must be a list of integers in 0..2**63-1")
    return value


def _count(value: Any, what: str, low: int = 0) -> int:
    """A lease, sequence number or credit count: an int in low..2**63-1."""
    if type(value) is not int or not low <= value <= MAX_WIRE_INT:
        raise MalformedFrame(f"{what} must be an integer in {low}..2**63-1, got {value!r}")
    return value


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedFrame(f"{what} has the wrong type ({type(value).__name__})")
    return value


def _held(value: Any) -> list[tuple[str, int]]:
    if not isinstance(value, list):
        raise MalformedFrame("held must be a list of [job_id, lease]")
    out: list[tuple[str, int]] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise MalformedFrame("held must be a list of [job_id, lease]")
        out.append((_typed(item[0], str, "held job id"), _count(item[1], "held lease")))
    return out


def _job_entry(item: Any) -> tuple[int, Record]:
    if type(item) is not list or len(item) != 2:
        raise MalformedFrame("a job entry must be [lease, record]")
    lease, record = item
    if type(lease) is not int or type(record) is not dict or not 0 <= lease <= MAX_WIRE_INT:
        raise MalformedFrame("a job entry must be [lease in 0..2**63-1, dict record]")
    if (
        type(record.get("id")) is not str
        or type(record.get("name")) is not str
        or type(record.get("args")) is not dict
    ):
        raise MalformedFrame("a job record needs string 'id' and 'name' and a dict 'args'")
    return lease, record


def _report_item(item: Any) -> ReportItem:
    # Hot path (one per job): the checks are inlined; _typed would cost a call per field.
    if type(item) is not list or len(item) != 5:
        raise MalformedFrame("a report must be [job_id, lease, outcome, final, args]")
    job_id, lease, outcome, final, args = item
    if (
        type(job_id) is not str
        or type(lease) is not int
        or not 0 <= lease <= MAX_WIRE_INT
        or type(final) is not bool
        or type(args) is not dict
    ):
        raise MalformedFrame("a report needs [str, lease in 0..2**63-1, str, bool, dict]")
    if type(outcome) is not str or outcome not in OUTCOMES:
        raise MalformedFrame(f"unknown report outcome {outcome!r}")
    return ReportItem(job_id, lease, outcome, final, args)


def _decode_fields(tag: int, f: list[Any]) -> Message:  # noqa: C901
    def need(count: int) -> None:
        if len(f) != count:
            raise MalformedFrame(f"message {tag} needs {count} fields, got {len(f)}")

    match tag:
        case Hello.TAG:
            need(10)
            return _hello(f)
        case Challenge.TAG:
            need(2)
            return Challenge(_typed(f[0], bytes, "nonce"), _typed(f[1], bytes, "proof"))
        case Auth.TAG:
            need(1)
            return Auth(_typed(f[0], bytes, "proof"))
        case Welcome.TAG:
            need(4)
            return Welcome(
                _typed(f[0], int, "version"),
                _typed(f[1], str, "distributor"),
                _str_list(f[2], "drop"),
                _typed(f[3], str, "instance"),
            )
        case Jobs.TAG:
            need(1)
            return Jobs([_job_entry(item) for item in _typed(f[0], list, "jobs")])
        case Ack.TAG:
            need(2)
            return Ack(_int_list(f[0], "leases"), _count(f[1], "credits"))
        case Nack.TAG:
            need(2)
            return Nack(_count(f[0], "lease"), _typed(f[1], str, "reason"))
        case Reports.TAG:
            need(2)
            items = [_report_item(item) for item in _typed(f[1], list, "reports")]
            first_seq = _count(f[0], "first_seq")
            # The distributor acknowledges up to first_seq + len - 1: that must fit too.
            _count(first_seq + len(items), "first_seq + number of reports")
            return Reports(first_seq, items)
        case ReportsAck.TAG:
            need(1)
            return ReportsAck(_count(f[0], "upto_seq", low=-1))
        case Cancel.TAG:
            need(1)
            return Cancel(_typed(f[0], str, "job_id"))
        case Return.TAG:
            need(1)
            return Return(_str_list(f[0], "job ids"))
        case Ping.TAG:
            need(0)
            return Ping()
        case Pong.TAG:
            need(0)
            return Pong()
        case Bye.TAG:
            need(1)
            return Bye(_typed(f[0], str, "reason"))
        case Held.TAG:
            need(3)
            return Held(_held(f[0]), _typed(f[1], bool, "last"), _typed(f[2], str, "origin"))
        case Dropped.TAG:
            need(2)
            return Dropped(_str_list(f[0], "drop"), _typed(f[1], bool, "last"))
        case Command.TAG:
            need(3)
            return _command(f)
        case CommandResult.TAG:
            need(4)
            return _command_result(f)
    raise MalformedFrame(f"unknown message tag {tag!r}")


def _hello(f: list[Any]) -> Hello:
    names = _str_list(f[2], "job names")
    held = _held(f[6])
    name = _typed(f[1], str, "node name")
    if len(name) > MAX_NAME_CHARS or any(len(n) > MAX_NAME_CHARS for n in names):
        raise MalformedFrame(f"node and job names are limited to {MAX_NAME_CHARS} characters")
    if len(names) > MAX_JOB_NAMES or len(held) > MAX_HELD_IN_HELLO:
        raise MalformedFrame(
            f"a Hello lists at most {MAX_JOB_NAMES} job names and {MAX_HELD_IN_HELLO} held jobs"
        )
    return Hello(
        _typed(f[0], int, "version"),
        name,
        names,
        _count(f[3], "credits"),
        _typed(f[4], str, "storage"),
        _typed(f[5], bytes, "nonce"),
        held,
        _typed(f[7], str, "instance"),
        _typed(f[8], bool, "wants_auth"),
        _count(f[9], "window"),
    )


def _command(f: list[Any]) -> Command:
    op = _typed(f[1], str, "command op")
    if op not in COMMAND_OPS:
        raise MalformedFrame(f"unknown command {op!r}")
    return Command(_typed(f[0], int, "command id"), op, _typed(f[2], str, "command argument"))


def _command_result(f: list[Any]) -> CommandResult:
    job = _typed(f[2], dict, "job")
    if job:
        _job_entry([0, job])  # the same checks as a job in a Jobs frame
    command_id, found = _typed(f[0], int, "command id"), _typed(f[1], bool, "found")
    return CommandResult(command_id, found, job, _typed(f[3], str, "error"))


def _reject_ext(code: int, data: bytes) -> Any:
    raise MalformedFrame(f"msgpack ext type {code} is not allowed")


# msgpack limits per message kind, applied *before* unpacking (msgpack checks each container's
# and string's announced length against them). Kinds that carry no map, string or bytes get 0,
# so a frame of a few bytes per item can't expand into millions of Python objects there; only
# Jobs, Reports and CommandResult carry job args (user data) and keep limits derived from
# the frame size.
_NAME: Final = 4096  # node/job names, ids, reasons
_ITEMS: Final = MAX_ITEMS_PER_FRAME
_UNBOUNDED: Final = -1  # derived from the frame size
_Limits = tuple[int, int, int, int]  # max_str_len, max_bin_len, max_array_len, max_map_len
_KIND_LIMITS: Final[dict[int, _Limits]] = {
    Hello.TAG: (_NAME, NONCE_BYTES, MAX_JOB_NAMES, 0),
    Challenge.TAG: (0, 64, 3, 0),
    Auth.TAG: (0, 64, 2, 0),
    Welcome.TAG: (_NAME, 0, _UNBOUNDED, 0),
    Jobs.TAG: (_UNBOUNDED, _UNBOUNDED, _UNBOUNDED, _UNBOUNDED),
    Ack.TAG: (0, 0, _ITEMS, 0),
    Nack.TAG: (_NAME, 0, 3, 0),
    Reports.TAG: (_UNBOUNDED, _UNBOUNDED, _UNBOUNDED, _UNBOUNDED),
    ReportsAck.TAG: (0, 0, 2, 0),
    Cancel.TAG: (_NAME, 0, 2, 0),
    Return.TAG: (_NAME, 0, _ITEMS, 0),
    Ping.TAG: (0, 0, 1, 0),
    Pong.TAG: (0, 0, 1, 0),
    Bye.TAG: (_NAME, 0, 2, 0),
    Held.TAG: (_NAME, 0, _ITEMS, 0),
    Dropped.TAG: (_NAME, 0, _UNBOUNDED, 0),
    Command.TAG: (_NAME, 0, 4, 0),
    CommandResult.TAG: (_UNBOUNDED, _UNBOUNDED, _UNBOUNDED, _UNBOUNDED),
}
# Kinds that carry no job args: no map at all (refused at the first one, empty or not), and at
# most one array per 4 bytes of frame, so their frames can't become ~60x their size in objects.
ARGS_KINDS: Final = frozenset({Jobs.TAG, Reports.TAG, CommandResult.TAG})


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


def peek_tag(body: bytes) -> int:
    """The message tag of a frame body, read from its first bytes without unpacking it."""
    if not body:
        raise MalformedFrame("empty frame body")
    head = body[0]
    offset = 1 if 0x91 <= head <= 0x9F else _TAG_OFFSET.get(head, 0)
    if not offset or len(body) <= offset:
        raise MalformedFrame("a frame must be a msgpack array starting with a message tag")
    if body[offset] > 0x7F:  # every tag is a positive fixint
        raise MalformedFrame(f"unknown message tag (byte {body[offset]:#x})")
    return body[offset]


def decode_body(body: bytes, allowed: frozenset[int] | None = None) -> Message:
    """Decode one frame body (without its length header) into a checked message.

    `allowed`: the tags acceptable now (the phase); any other is refused before unpacking.
    """
    tag = peek_tag(body)
    limits = _KIND_LIMITS.get(tag)
    if limits is None:
        raise MalformedFrame(f"unknown message tag {tag!r}")
    if allowed is not None and tag not in allowed:
        raise MalformedFrame(f"message tag {tag} is not allowed before the handshake")
    size = len(body)
    max_str, max_bin, max_array, max_map = (size if lim < 0 else lim for lim in limits)
    hooks: dict[str, Any] = {}
    if tag not in ARGS_KINDS:
        hooks = {"object_hook": _no_maps, "list_hook": _array_budget(size)}
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=False,
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_array_len=max_array,
            max_map_len=max_map,
            max_ext_len=size,
            # ext types are refused outright, except timestamps (ext -1, decoded by msgpack
            # itself), which become float seconds.
            ext_hook=_reject_ext,
            timestamp=1,
            **hooks,
        )
    except MalformedFrame:
        raise
    except Exception as exc:  # noqa: BLE001 (msgpack raises many types on garbage)
        raise MalformedFrame(f"undecodable frame body: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, list) or not obj or obj[0] != tag:
        raise MalformedFrame("a frame must be a msgpack array starting with a message tag")
    return _decode_fields(tag, obj[1:])
