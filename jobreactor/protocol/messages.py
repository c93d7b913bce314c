"""The messages of the wire protocol and the constants they obey (see jobreactor.protocol)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

# 2: every frame after a secret handshake carries a MAC (protocol/mac.py); Hello bounded.
PROTOCOL_VERSION: Final = 2
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
# Job and node names: long enough for any dotted path, short enough that names can't be a
# memory or CPU lever (100,000-character names were accepted; issue 18). Checked at enqueue,
# in definitions, in config and in the Hello.
MAX_NAME_CHARS: Final = 200
# Job names one node may declare in its Hello: a 64 KiB Hello of 1-byte names decoded to
# 1.28 MB of Python objects and was kept for handshake_timeout (issue 18).
MAX_JOB_NAMES: Final = 1024
# Held jobs per Hello (the rest follow in Held frames after authentication), and items (held
# jobs, acknowledged leases, returned ids) per Held, Ack, Return or Dropped frame: each frame
# is a bounded amount of work for the receiving loop (4 MB Held frames held it for seconds).
MAX_HELD_IN_HELLO: Final = 500
MAX_ITEMS_PER_FRAME: Final = 5000
# Every integer the protocol counts with (leases, sequence numbers, credits) fits a signed
# 64-bit integer, so the peer can always encode what it derives from it (seq + n, ...).
MAX_WIRE_INT: Final = 2**63 - 1

Record = dict[str, Any]


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
    # The most credit the node ever grants (concurrency + prefetch); 0: `credits`. The
    # distributor never counts more free credit for it than this (a flood of Acks granted
    # 2,300,000 credits; issue 18).
    window: int = 0

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
            self.window,
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
    # Set when the node hands over what it holds from an adopted instance (discovery): the
    # frames with `last` list everything it has from `origin`; anything else is not there.
    origin: str = ""

    def fields(self) -> list[Any]:
        return [self.held, self.last, self.origin]


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
