"""The messages of the wire protocol and the constants they obey (see jobreactor.protocol)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, NamedTuple

from jobreactor.errors import MalformedFrame
from jobreactor.protocol.schema import (
    MAX_WIRE_INT,
    Bool,
    Bytes,
    Codec,
    Count,
    Data,
    Entries,
    Int,
    JobRecord,
    ListOf,
    OneOf,
    Str,
    Version,
    compile_codec,
    kinds_of,
)

# 2: every frame after a secret handshake carries a MAC (protocol/mac.py); Hello bounded;
# Command ops quiet / resume / drain (node/control.py).
# 3: the schema declared once (protocol/schema.py); a report says which batch its job
# completed (`ReportItem.completes_batch`, no longer a key in the job's args); the message of
# more held jobs is `HeldJobs`. The version is the first field of both hellos (Hello, Welcome)
# in every version, and is read before the rest: another version is an "upgrade" error.
PROTOCOL_VERSION: Final = 3
# 16 MiB: far above any sane job (args are meant to be ids and small values), far below what
# would let one peer exhaust memory. Both sides check it before buffering a body.
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
# Before the handshake completes a peer is anonymous: its frames must fit this (a Hello with a
# few hundred held jobs and job names does; the rest of a held list goes in HeldJobs frames after
# authentication). With max_frame_bytes instead, 150 anonymous sockets could pin 2.4 GB.
PRE_AUTH_MAX_FRAME_BYTES: Final = 64 * 1024
NONCE_BYTES: Final = 16
# Job and node names: long enough for any dotted path, short enough that names can't be a
# memory or CPU lever (100,000-character names were accepted; issue 18). Checked at enqueue,
# in definitions, in config and in the Hello.
MAX_NAME_CHARS: Final = 200
# Job names one node may declare in its Hello: a 64 KiB Hello of 1-byte names decoded to
# 1.28 MB of Python objects and was kept for handshake_timeout (issue 18).
MAX_JOB_NAMES: Final = 1024
# Held jobs per Hello (the rest follow in HeldJobs frames after authentication), and items (held
# jobs, acknowledged leases, returned ids) per HeldJobs, Ack, Return or Dropped frame: each frame
# is a bounded amount of work for the receiving loop (4 MB HeldJobs frames held it for seconds).
MAX_HELD_IN_HELLO: Final = 500
MAX_ITEMS_PER_FRAME: Final = 5000
# Every integer the protocol counts with (leases, sequence numbers, credits) fits a signed
# 64-bit integer, so the peer can always encode what it derives from it (seq + n, ...):
# MAX_WIRE_INT (schema.py).

Record = dict[str, Any]

# The field types of the wire (schema.py): the annotation is the declaration the encoder, the
# decoder and the msgpack limits of each message are generated from.
Counted = Annotated[int, Count()]  # a lease, sequence number or credit count
Text = Annotated[str, Str()]
Flag = Annotated[bool, Bool()]
Name = Annotated[str, Str(MAX_NAME_CHARS)]
Names = Annotated[list[str], ListOf(Str())]
HeldList = list[tuple[str, int]]  # (job id, lease)
_HELD_ENTRY: Final = {"job_id": Str(), "lease": Count()}
NodeVersion = Annotated[int, Version(PROTOCOL_VERSION, sender="node")]
DistributorVersion = Annotated[int, Version(PROTOCOL_VERSION, sender="distributor")]
Proof = Annotated[bytes, Bytes(64)]
# "started": first attempt began (frees enqueue_id/loner keys); never final.
OUTCOMES: Final = frozenset({"success", "error", "cancelled", "started"})
# App-side housekeeping a node does in its own storage (JR.release_lock, JR.retry), and an
# operator's hold on the node (node/control.py: quiet, resume, drain; protocol version 2).
COMMAND_OPS: Final = frozenset({"release_lock", "retry", "quiet", "resume", "drain"})


class Message:
    """Base of every message. `TAG` is its first array item on the wire; the fields follow, in
    the order the subclass declares them (a dataclass whose annotations carry a wire Kind)."""

    __slots__ = ()
    TAG: ClassVar[int]

    def to_wire(self) -> list[Any]:
        """`[TAG, *fields]`, as msgpack packs it (generated per class from the schema)."""
        raise NotImplementedError

    def fields(self) -> list[Any]:
        return self.to_wire()[1:]

    def check_across(self) -> None:
        """Checks across fields, run on a decoded message (MalformedFrame); none by default."""


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TAG: ClassVar[int] = 1
    version: NodeVersion  # first, in every version: read before the rest of the frame
    node_name: Name
    job_names: Annotated[list[str], ListOf(Str(MAX_NAME_CHARS), MAX_JOB_NAMES)]
    credits: Counted
    storage: Text
    nonce: Annotated[bytes, Bytes(NONCE_BYTES)]
    # (job id, lease) of jobs still held from this distributor
    held: Annotated[HeldList, Entries(_HELD_ENTRY, max_items=MAX_HELD_IN_HELLO)]
    # Random per node process: tells a reconnection of this node from another node that
    # (by mistake or on purpose) uses the same name. "" = unknown (every "" is one instance).
    instance: Text = ""
    # The node has a secret: a distributor without one must refuse it, not welcome it.
    wants_auth: Flag = False
    # The most credit the node ever grants (concurrency + prefetch); 0: `credits`. The
    # distributor never counts more free credit for it than this (a flood of Acks granted
    # 2,300,000 credits; issue 18).
    window: Counted = 0


@dataclass(frozen=True, slots=True)
class Challenge(Message):
    TAG: ClassVar[int] = 2
    nonce: Proof
    proof: Proof


@dataclass(frozen=True, slots=True)
class Auth(Message):
    TAG: ClassVar[int] = 3
    proof: Proof


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    TAG: ClassVar[int] = 4
    version: DistributorVersion  # first, in every version: read before the rest of the frame
    distributor: Text
    drop: Names
    # The distributor's instance id (`host:pid:hex`): a node that finds another instance at an
    # address it knew (a recycled port, a restart) hands jobs of the old one over (discovery).
    instance: Text = ""


@dataclass(frozen=True, slots=True)
class Jobs(Message):
    """A batch of jobs, each with the lease the distributor issued for it."""

    TAG: ClassVar[int] = 5
    jobs: Annotated[list[tuple[int, Record]], Entries({"lease": Count(), "record": JobRecord()})]


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The node stored these jobs, and grants `credits` more jobs."""

    TAG: ClassVar[int] = 6
    leases: Annotated[list[int], ListOf(Count(), MAX_ITEMS_PER_FRAME)]
    credits: Counted


@dataclass(frozen=True, slots=True)
class Nack(Message):
    TAG: ClassVar[int] = 7
    lease: Counted
    reason: Text


class ReportItem(NamedTuple):
    """One job's outcome. A tuple: it packs as the wire array as it is, and decodes at the
    cost of one tuple (a report crosses the wire for every job)."""

    job_id: Text
    lease: Counted
    outcome: Annotated[str, OneOf(OUTCOMES)]  # "success" | "error" | "cancelled" | "started"
    final: Flag
    args: Annotated[Record, Data()]
    # The batch (its token) whose last part this job was: the app runs its on_complete. "":
    # none. A field, never a key in `args`: job data can't fake it, and args come back whole.
    completes_batch: Text = ""


@dataclass(frozen=True, slots=True)
class Reports(Message):
    """Job outcomes, numbered from `first_seq` so the distributor can acknowledge them."""

    TAG: ClassVar[int] = 8
    first_seq: Counted
    items: Annotated[list[ReportItem], Entries(kinds_of(ReportItem), into=ReportItem)]

    def check_across(self) -> None:
        # The distributor acknowledges up to first_seq + len - 1: that must fit too.
        if self.first_seq + len(self.items) > MAX_WIRE_INT:
            raise MalformedFrame("first_seq + number of reports must be in 0..2**63-1")


@dataclass(frozen=True, slots=True)
class ReportsAck(Message):
    TAG: ClassVar[int] = 9
    upto_seq: Annotated[int, Count(low=-1)]


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    TAG: ClassVar[int] = 10
    job_id: Text


@dataclass(frozen=True, slots=True)
class Return(Message):
    """Jobs the node will not start (it is shutting down): dispatch them elsewhere."""

    TAG: ClassVar[int] = 11
    job_ids: Annotated[list[str], ListOf(Str(), MAX_ITEMS_PER_FRAME)]


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TAG: ClassVar[int] = 12


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TAG: ClassVar[int] = 13


@dataclass(frozen=True, slots=True)
class Bye(Message):
    TAG: ClassVar[int] = 14
    reason: Text


@dataclass(frozen=True, slots=True)
class HeldJobs(Message):
    """More of the jobs a reconnecting node holds (those that didn't fit in its Hello).
    (`Held`, in node/, is one held job on the node: another thing.)"""

    TAG: ClassVar[int] = 15
    held: Annotated[HeldList, Entries(_HELD_ENTRY, max_items=MAX_ITEMS_PER_FRAME)]
    last: Flag
    # Set when the node hands over what it holds from an adopted instance (discovery): the
    # frames with `last` list everything it has from `origin`; anything else is not there.
    origin: Text = ""


@dataclass(frozen=True, slots=True)
class Dropped(Message):
    """The distributor's answer to one `HeldJobs`: which of those jobs the node must drop."""

    TAG: ClassVar[int] = 16
    drop: Names
    last: Flag


@dataclass(frozen=True, slots=True)
class Command(Message):
    """The app asks a node to act on the node's storage: `op` on `arg` (a lock key, a job id)."""

    TAG: ClassVar[int] = 20  # 20+: app housekeeping (17-19 left to the handshake's growth)
    command_id: Annotated[int, Int()]
    op: Annotated[str, OneOf(COMMAND_OPS)]
    arg: Text


@dataclass(frozen=True, slots=True)
class CommandResult(Message):
    """The node's answer: `found` (the lock existed, the failed job was there), the job it
    took for a retry (the distributor enqueues it again; `{}` for none), or why it could not
    look (`""` when it could)."""

    TAG: ClassVar[int] = 21
    command_id: Annotated[int, Int()]
    found: Flag
    job: Annotated[Record, JobRecord(empty_ok=True)]
    error: Text


MESSAGES: Final[tuple[type[Message], ...]] = (
    Hello, Challenge, Auth, Welcome, Jobs, Ack, Nack, Reports, ReportsAck, Cancel, Return,
    Ping, Pong, Bye, HeldJobs, Dropped, Command, CommandResult,
)  # fmt: skip


def _compile() -> dict[int, Codec]:
    codecs = {}
    for cls in MESSAGES:
        across = cls.check_across is not Message.check_across
        codec = codecs[cls.TAG] = compile_codec(cls, cls.TAG, across)
        cls.to_wire = codec.encode  # type: ignore[method-assign,assignment]
    return codecs


# Tag -> the generated encoder, decoder and msgpack limits of that message (decoding.py).
CODECS: Final = _compile()
