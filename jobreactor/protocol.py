"""The wire protocol, sans I/O: bytes in, messages out.

A frame is a 4-byte big-endian length followed by one msgpack array whose first item is the
message tag. The length is checked against `max_frame_bytes` (much smaller before the handshake)
*before* the body is buffered; the tag is read before unpacking, so a kind not allowed yet is
refused unread; msgpack is unpacked with limits per message kind, no ext types are trusted, and
every field is type- and range-checked here, so nothing malformed reaches the distributor or the
node. Nothing is ever unpickled or evaluated.

Conversation (the node dials; one connection per node/distributor pair, full duplex):

    node                                   distributor
    Hello(version, name, jobs, credits, nonce, held, instance, wants_auth) ->
                                        <- Challenge(nonce, proof)     only with a secret
    Auth(proof) ->                                                     only with a secret
                                        <- Welcome(address, drop, instance)
    Held(more held, last) ->               (only when the held list outgrew the Hello)
                                        <- Dropped(drop, last)
                                        <- Jobs([(lease, record), ...])
    Ack(leases, credits) ->                (jobs stored; credits granted back)
    Nack(lease, reason) ->                 (could not store: the distributor requeues)
    Reports(first_seq, [(job_id, lease, outcome, final, args), ...]) ->
                                        <- ReportsAck(upto_seq)
                                        <- Cancel(job_id)
    Return(job_ids) ->                     (not started, handed back at shutdown)
    Ping / Pong either way; Bye(reason) either way before closing.
                                        <- Command(id, op, arg)      JR.release_lock / JR.retry
    CommandResult(id, found, job, error) ->

With a secret, each side proves it knows it by an HMAC-SHA256 over both fresh nonces, the
node's name and its own role label, so a proof can be neither replayed nor reflected.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import msgpack

from jobreactor.errors import FrameTooLarge, InvalidArgs, LocalProtocolError, MalformedFrame

PROTOCOL_VERSION: Final = 1
# Put into the success args of the part that completed its batch; the distributor takes it out.
BATCH_COMPLETE_KEY: Final = "_jr_batch_complete"
# 16 MiB: far above any sane job (args are meant to be ids and small values), far below what
# would let one peer exhaust memory. Both sides check it before buffering a body.
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
# Before the handshake completes a peer is anonymous: its frames must fit this (a Hello with a
# few hundred held jobs and job names does; the rest of a held list goes in Held frames after
# authentication). With max_frame_bytes instead, 150 anonymous sockets could pin 2.4 GB.
PRE_AUTH_MAX_FRAME_BYTES: Final = 64 * 1024
NONCE_BYTES: Final = 16
# Every integer the protocol counts with (leases, sequence numbers, credits) fits a signed
# 64-bit integer, so the peer can always encode what it derives from it (seq + n, ...).
MAX_WIRE_INT: Final = 2**63 - 1
_LENGTH: Final = struct.Struct(">I")

Record = dict[str, Any]
T = TypeVar("T")


class Message:
    """Base of every message. `TAG` is its first array item on the wire."""

    __slots__ = ()
    TAG: ClassVar[int]

    def fields(self) -> list[Any]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TAG: ClassVar[int] = 1
    version: int
    node_name: str
    job_names: list[str]
    credits: int
    storage: str
    nonce: bytes
    held: list[tuple[str, int]]  # (job id, lease) of jobs still held from this distributor
    # Random per node process: tells a reconnection of this node from another node that
    # (by mistake or on purpose) uses the same name. "" = unknown (every "" is one instance).
    instance: str = ""
    # The node has a secret: a distributor without one must refuse it, not welcome it.
    wants_auth: bool = False

    def fields(self) -> list[Any]:
        return [
            self.version,
            self.node_name,
            self.job_names,
            self.credits,
            self.storage,
            self.nonce,
            self.held,
            self.instance,
            self.wants_auth,
        ]


@dataclass(frozen=True, slots=True)
class Challenge(Message):
    TAG: ClassVar[int] = 2
    nonce: bytes
    proof: bytes

    def fields(self) -> list[Any]:
        return [self.nonce, self.proof]


@dataclass(frozen=True, slots=True)
class Auth(Message):
    TAG: ClassVar[int] = 3
    proof: bytes

    def fields(self) -> list[Any]:
        return [self.proof]


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    TAG: ClassVar[int] = 4
    version: int
    distributor: str
    drop: list[str]
    # The distributor's instance id (`host:pid:hex`): a node that finds another instance at an
    # address it knew (a recycled port, a restart) hands jobs of the old one over (discovery).
    instance: str = ""

    def fields(self) -> list[Any]:
        return [self.version, self.distributor, self.drop, self.instance]


@dataclass(frozen=True, slots=True)
class Jobs(Message):
    """A batch of jobs, each with the lease the distributor issued for it."""

    TAG: ClassVar[int] = 5
    jobs: list[tuple[int, Record]]

    def fields(self) -> list[Any]:
        return [self.jobs]


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The node stored these jobs, and grants `credits` more jobs."""

    TAG: ClassVar[int] = 6
    leases: list[int]
    credits: int

    def fields(self) -> list[Any]:
        return [self.leases, self.credits]


@dataclass(frozen=True, slots=True)
class Nack(Message):
    TAG: ClassVar[int] = 7
    lease: int
    reason: str

    def fields(self) -> list[Any]:
        return [self.lease, self.reason]


@dataclass(frozen=True, slots=True)
class ReportItem:
    job_id: str
    lease: int
    outcome: str  # "success" | "error" | "cancelled" | "started"
    final: bool
    args: Record


# "started": first attempt began (frees enqueue_id/loner keys); never final.
OUTCOMES: Final = frozenset({"success", "error", "cancelled", "started"})


@dataclass(frozen=True, slots=True)
class Reports(Message):
    """Job outcomes, numbered from `first_seq` so the distributor can acknowledge them."""

    TAG: ClassVar[int] = 8
    first_seq: int
    items: list[ReportItem]

    def fields(self) -> list[Any]:
        return [
            self.first_seq,
            [[r.job_id, r.lease, r.outcome, r.final, r.args] for r in self.items],
        ]


@dataclass(frozen=True, slots=True)
class ReportsAck(Message):
    TAG: ClassVar[int] = 9
    upto_seq: int

    def fields(self) -> list[Any]:
        return [self.upto_seq]


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    TAG: ClassVar[int] = 10
    job_id: str

    def fields(self) -> list[Any]:
        return [self.job_id]


@dataclass(frozen=True, slots=True)
class Return(Message):
    """Jobs the node will not start (it is shutting down): dispatch them elsewhere."""

    TAG: ClassVar[int] = 11
    job_ids: list[str]

    def fields(self) -> list[Any]:
        return [self.job_ids]


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TAG: ClassVar[int] = 12

    def fields(self) -> list[Any]:
        return []


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TAG: ClassVar[int] = 13

    def fields(self) -> list[Any]:
        return []


@dataclass(frozen=True, slots=True)
class Bye(Message):
    TAG: ClassVar[int] = 14
    reason: str

    def fields(self) -> list[Any]:
        return [self.reason]


@dataclass(frozen=True, slots=True)
class Held(Message):
    """More of the jobs a reconnecting node holds (those that didn't fit in its Hello)."""

    TAG: ClassVar[int] = 15
    held: list[tuple[str, int]]
    last: bool

    def fields(self) -> list[Any]:
        return [self.held, self.last]


@dataclass(frozen=True, slots=True)
class Dropped(Message):
    """The distributor's answer to one `Held`: which of those jobs the node must drop."""

    TAG: ClassVar[int] = 16
    drop: list[str]
    last: bool

    def fields(self) -> list[Any]:
        return [self.drop, self.last]


# App-side housekeeping a node does in its own storage (JR.release_lock, JR.retry).
COMMAND_OPS: Final = frozenset({"release_lock", "retry"})


@dataclass(frozen=True, slots=True)
class Command(Message):
    """The app asks a node to act on the node's storage: `op` on `arg` (a lock key, a job id)."""

    TAG: ClassVar[int] = 20  # 20+: app housekeeping (17-19 left to the handshake's growth)
    command_id: int
    op: str
    arg: str

    def fields(self) -> list[Any]:
        return [self.command_id, self.op, self.arg]


@dataclass(frozen=True, slots=True)
class CommandResult(Message):
    """The node's answer: `found` (the lock existed, the failed job was there), the job it
    took for a retry (the distributor enqueues it again; `{}` for none), or why it could not
    look (`""` when it could)."""

    TAG: ClassVar[int] = 21
    command_id: int
    found: bool
    job: Record
    error: str

    def fields(self) -> list[Any]:
        return [self.command_id, self.found, self.job, self.error]


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
            need(9)
            return Hello(
                _typed(f[0], int, "version"),
                _typed(f[1], str, "node name"),
                _str_list(f[2], "job names"),
                _count(f[3], "credits"),
                _typed(f[4], str, "storage"),
                _typed(f[5], bytes, "nonce"),
                _held(f[6]),
                _typed(f[7], str, "instance"),
                _typed(f[8], bool, "wants_auth"),
            )
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
            need(2)
            return Held(_held(f[0]), _typed(f[1], bool, "last"))
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
_UNBOUNDED: Final = -1  # derived from the frame size
_Limits = tuple[int, int, int, int]  # max_str_len, max_bin_len, max_array_len, max_map_len
_KIND_LIMITS: Final[dict[int, _Limits]] = {
    Hello.TAG: (_NAME, NONCE_BYTES, _UNBOUNDED, 0),
    Challenge.TAG: (0, 64, 3, 0),
    Auth.TAG: (0, 64, 2, 0),
    Welcome.TAG: (_NAME, 0, _UNBOUNDED, 0),
    Jobs.TAG: (_UNBOUNDED, _UNBOUNDED, _UNBOUNDED, _UNBOUNDED),
    Ack.TAG: (0, 0, _UNBOUNDED, 0),
    Nack.TAG: (_NAME, 0, 3, 0),
    Reports.TAG: (_UNBOUNDED, _UNBOUNDED, _UNBOUNDED, _UNBOUNDED),
    ReportsAck.TAG: (0, 0, 2, 0),
    Cancel.TAG: (_NAME, 0, 2, 0),
    Return.TAG: (_NAME, 0, _UNBOUNDED, 0),
    Ping.TAG: (0, 0, 1, 0),
    Pong.TAG: (0, 0, 1, 0),
    Bye.TAG: (_NAME, 0, 2, 0),
    Held.TAG: (_NAME, 0, _UNBOUNDED, 0),
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


def encode(message: Message) -> bytes:
    """One frame: length header + msgpack body."""
    try:
        body: bytes = msgpack.packb([message.TAG, *message.fields()], use_bin_type=True)
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
    """

    def __init__(
        self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, allowed: frozenset[int] | None = None
    ) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes
        self._allowed = allowed

    def restrict(self, max_frame_bytes: int, allowed: frozenset[int] | None) -> None:
        """From the next frame on: this size limit and only these tags (None: any)."""
        self._max_frame_bytes = max_frame_bytes
        self._allowed = allowed

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def messages(self) -> Iterator[Message]:
        """Yield every complete message buffered so far; keep the remainder."""
        buffer = self._buffer
        start = 0
        try:
            # The limits are re-read per frame: a message (Welcome, Auth) may lift them.
            while len(buffer) - start >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, start)
                if size > self._max_frame_bytes:  # checked before the body arrives
                    raise FrameTooLarge(size, self._max_frame_bytes)
                end = start + _LENGTH.size + size
                if len(buffer) < end:
                    break
                body = bytes(buffer[start + _LENGTH.size : end])
                start = end
                yield decode_body(body, self._allowed)
        finally:
            if start:
                del buffer[:start]


# --- handshake proofs --------------------------------------------------------------------


def handshake_proof(
    secret: bytes, role: str, node_name: str, node_nonce: bytes, distributor_nonce: bytes
) -> bytes:
    """HMAC-SHA256 proving knowledge of `secret`, bound to both nonces, the node and a role."""
    message = b"\x00".join(
        [b"jobreactor-v1", role.encode(), node_name.encode(), node_nonce, distributor_nonce]
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def proof_matches(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received)
