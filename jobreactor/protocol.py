"""The wire protocol, sans I/O: bytes in, messages out.

A frame is a 4-byte big-endian length followed by one msgpack array whose first item is the
message tag. The length is checked against `max_frame_bytes` *before* the body is buffered, and
msgpack is unpacked with limits derived from the frame size, no ext types are trusted, and every
field is type-checked here, so nothing malformed reaches the distributor or the node. Nothing is
ever unpickled or evaluated.

Conversation (the node dials; one connection per node/distributor pair, full duplex):

    node                                   distributor
    Hello(version, name, jobs, credits, nonce, held) ->
                                        <- Challenge(nonce, proof)     only with a secret
    Auth(proof) ->                                                     only with a secret
                                        <- Welcome(address, drop)
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

from jobreactor.errors import FrameTooLarge, LocalProtocolError, MalformedFrame

PROTOCOL_VERSION: Final = 1
# Put into the success args of the part that completed its batch; the distributor takes it out.
BATCH_COMPLETE_KEY: Final = "_jr_batch_complete"
# 16 MiB: far above any sane job (args are meant to be ids and small values), far below what
# would let one peer exhaust memory. Both sides check it before buffering a body.
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
NONCE_BYTES: Final = 16
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

    def fields(self) -> list[Any]:
        return [
            self.version,
            self.node_name,
            self.job_names,
            self.credits,
            self.storage,
            self.nonce,
            self.held,
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

    def fields(self) -> list[Any]:
        return [self.version, self.distributor, self.drop]


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
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise MalformedFrame(f"{what} must be a list of integers")
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
        out.append((_typed(item[0], str, "held job id"), _typed(item[1], int, "held lease")))
    return out


def _job_entry(item: Any) -> tuple[int, Record]:
    if type(item) is not list or len(item) != 2:
        raise MalformedFrame("a job entry must be [lease, record]")
    lease, record = item
    if type(lease) is not int or type(record) is not dict:
        raise MalformedFrame("a job entry must be [int lease, dict record]")
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
        or type(final) is not bool
        or type(args) is not dict
    ):
        raise MalformedFrame("a report needs [str, int, str, bool, dict]")
    if type(outcome) is not str or outcome not in OUTCOMES:
        raise MalformedFrame(f"unknown report outcome {outcome!r}")
    return ReportItem(job_id, lease, outcome, final, args)


def _decode_fields(tag: int, f: list[Any]) -> Message:  # noqa: C901
    def need(count: int) -> None:
        if len(f) != count:
            raise MalformedFrame(f"message {tag} needs {count} fields, got {len(f)}")

    match tag:
        case Hello.TAG:
            need(7)
            return Hello(
                _typed(f[0], int, "version"),
                _typed(f[1], str, "node name"),
                _str_list(f[2], "job names"),
                _typed(f[3], int, "credits"),
                _typed(f[4], str, "storage"),
                _typed(f[5], bytes, "nonce"),
                _held(f[6]),
            )
        case Challenge.TAG:
            need(2)
            return Challenge(_typed(f[0], bytes, "nonce"), _typed(f[1], bytes, "proof"))
        case Auth.TAG:
            need(1)
            return Auth(_typed(f[0], bytes, "proof"))
        case Welcome.TAG:
            need(3)
            return Welcome(
                _typed(f[0], int, "version"),
                _typed(f[1], str, "distributor"),
                _str_list(f[2], "drop"),
            )
        case Jobs.TAG:
            need(1)
            return Jobs([_job_entry(item) for item in _typed(f[0], list, "jobs")])
        case Ack.TAG:
            need(2)
            return Ack(_int_list(f[0], "leases"), _typed(f[1], int, "credits"))
        case Nack.TAG:
            need(2)
            return Nack(_typed(f[0], int, "lease"), _typed(f[1], str, "reason"))
        case Reports.TAG:
            need(2)
            items = [_report_item(item) for item in _typed(f[1], list, "reports")]
            return Reports(_typed(f[0], int, "first_seq"), items)
        case ReportsAck.TAG:
            need(1)
            return ReportsAck(_typed(f[0], int, "upto_seq"))
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


def decode_body(body: bytes) -> Message:
    """Decode one frame body (without its length header) into a checked message."""
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=False,
            # unpackb derives its container and string limits from len(body), which
            # max_frame_bytes already bounds; ext types are refused outright, except
            # timestamps (ext -1, decoded by msgpack itself), which become float seconds.
            ext_hook=_reject_ext,
            timestamp=1,
        )
    except MalformedFrame:
        raise
    except Exception as exc:  # noqa: BLE001 (msgpack raises many types on garbage)
        raise MalformedFrame(f"undecodable frame body: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise MalformedFrame("a frame must be a msgpack array starting with a message tag")
    return _decode_fields(obj[0], obj[1:])


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
    """Check that `args` can cross the wire; raise TypeError naming the bad value if not."""
    try:
        return msgpack.packb(args, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"job args must be plain data (dict, list, str, int, float, bool, None, bytes): {exc}"
        ) from None


class FrameDecoder:
    """Turns a byte stream into messages.

    Feed it whatever the socket returned, in pieces of any size, then drain `messages()`.
    It never reads from anything itself. After it raised, the stream is unusable: close it.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes

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
            while len(buffer) - start >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer, start)
                if size > self._max_frame_bytes:  # checked before the body arrives
                    raise FrameTooLarge(size, self._max_frame_bytes)
                end = start + _LENGTH.size + size
                if len(buffer) < end:
                    break
                body = bytes(buffer[start + _LENGTH.size : end])
                start = end
                yield decode_body(body)
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
