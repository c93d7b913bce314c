"""The job record, its statuses, enqueue options (validated once, at enqueue) and timing rules.

Pure: no I/O and no clock. Callers pass `now_epoch_s` (wall-clock seconds) in. Wall time is used
because a due time crosses processes; each node converts it to its own loop clock once
(docs/semantics.md §1).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import operator
import traceback
from dataclasses import dataclass, fields
from enum import StrEnum
from itertools import compress
from typing import Any, Final

from jobreactor.cron import CronSchedule, next_cron_due
from jobreactor.errors import InvalidOptions
from jobreactor.protocol.messages import MAX_NAME_CHARS

JobArgs = dict[str, Any]
JobOpts = dict[str, Any]


class JobStatus(StrEnum):
    """The life cycle of docs/semantics.md §1: new → in progress → … → complete/failed/cancelled."""

    NEW = "new"
    IN_PROGRESS = "in progress"
    QUEUED = "queued"
    ERROR = "error"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATUSES: Final = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED})

ENQUEUE_OPTIONS: Final = frozenset(
    {
        "after", "run_at", "period", "defer", "node", "not_node", "priority", "max_attempt",
        "retry_strategy", "max_run_time", "enqueue_id", "perform_id", "duplicate_delay", "lock",
        "lock_timeout", "loner", "batch", "part", "cron", "tz", "catch_up",
    }
)  # fmt: skip
RETRY_STRATEGIES: Final = frozenset({"linear", "exponential"})


@dataclass(slots=True)
class JobRecord:
    """One job as it is sent, stored and run. Fields: docs/semantics.md §1."""

    id: str
    name: str
    args: JobArgs
    attempt: int = 0
    status: str = JobStatus.NEW
    # Absolute due time of the next run, wall-clock seconds (survives transit and restarts).
    run_at_ts: float = 0.0
    make_after: float = 0.0
    period: float = 0.0
    defer: bool = False
    # `defer="process"`: the body runs in the node's process pool (node/process_pool.py).
    defer_process: bool = False
    # A cron schedule (cron.py): the next due time comes from the expression, in `tz`.
    cron: str | None = None
    tz: str | None = None
    catch_up: bool = False
    node: str | None = None
    not_node: str | None = None
    distributor: str = ""
    priority: int = 0
    max_attempt: int | None = None
    retry_strategy: str | None = None
    max_run_time: float | None = None
    on_success: str | None = None
    on_error: str | None = None
    # When the last attempt started / failed (run_at is a start time, not a schedule).
    run_at: float | None = None
    failed_at: float | None = None
    last_error: str | None = None
    enqueue_id: str | None = None
    perform_id: str | None = None
    duplicate_delay: float | None = None
    lock: str | None = None
    lock_timeout: float | None = None
    loner: bool = False
    batch: str | None = None
    part: str | None = None
    # The distributor's lease for the node holding it (node side only; kept across restarts).
    lease: int = 0
    # W3C traceparent of the span that enqueued it (jobreactor/otel.py; None: not traced).
    trace: str | None = None
    # Unknown keys from a newer peer, kept rather than trusted (None until there are some,
    # to save an empty dict per pending job).
    extra: dict[str, Any] | None = None

    @property
    def is_periodic(self) -> bool:
        return self.period > 0 or self.cron is not None

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """Every field that differs from its default: the wire and storage form."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        # Every job is turned into this at dispatch. Most fields keep their defaults all their
        # life: one C call reads those and one tuple comparison (identity first, in C) says
        # they are all unchanged; then only the few that usually differ are looked at. 1.7 µs
        # a job against 3.3-4.5 for comparing all ~30 fields.
        if _GET_RARE(self) == _RARE_DEFAULTS and not self.extra:
            values = _GET_COMMON(self)
            for key, value, default in zip(_COMMON_NAMES, values, _COMMON_DEFAULTS, strict=True):
                if value != default:
                    out[key] = value
            return out
        values = _GET_DEFAULTED(self)
        differs = map(operator.ne, values, _DEFAULT_VALUES)
        out.update(compress(zip(_DEFAULT_NAMES, values, strict=True), differs))
        if self.extra:
            for key, value in self.extra.items():
                out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Build from `to_dict` output; unknown keys are kept in `extra`, not trusted as fields."""
        if data.keys() <= _FIELD_NAMES:  # the usual case: one call, no filtering
            return cls(**data)
        known = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        unknown = {k: v for k, v in data.items() if k not in _FIELD_NAMES}
        record = cls(**known)
        if unknown:
            record.extra = unknown
        return record

    def copy(self) -> JobRecord:
        clone = JobRecord.from_dict(self.to_dict())
        clone.args = dict(self.args)
        return clone


_FIELD_NAMES: Final = frozenset(f.name for f in fields(JobRecord)) - {"extra"}
_DEFAULTS: Final = {
    f.name: f.default for f in fields(JobRecord) if f.name not in {"id", "name", "args", "extra"}
}
_DEFAULT_NAMES: Final = tuple(_DEFAULTS)
_DEFAULT_VALUES: Final = tuple(_DEFAULTS.values())
_GET_DEFAULTED: Final = operator.attrgetter(*_DEFAULT_NAMES)
# The fields a job in flight usually carries beyond id, name and args (to_dict's quick path).
_USUALLY_SET: Final = frozenset(
    {"attempt", "status", "run_at_ts", "make_after", "distributor", "priority", "on_success",
     "on_error", "lease"}
)  # fmt: skip
# In declaration order, as the full path writes them (golden bytes pin the order).
_COMMON_NAMES: Final = tuple(name for name in _DEFAULT_NAMES if name in _USUALLY_SET)
_RARE_NAMES: Final = tuple(name for name in _DEFAULT_NAMES if name not in _COMMON_NAMES)
_COMMON_DEFAULTS: Final = tuple(_DEFAULTS[name] for name in _COMMON_NAMES)
_RARE_DEFAULTS: Final = tuple(_DEFAULTS[name] for name in _RARE_NAMES)
_GET_COMMON: Final = operator.attrgetter(*_COMMON_NAMES)
_GET_RARE: Final = operator.attrgetter(*_RARE_NAMES)


# --- building a record from enqueue arguments ------------------------------------------------


def canonical_json(value: Any) -> str:
    """One text for equal data (sorted keys, compact): lock keys (docs/semantics.md §7)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _finite(value: float) -> bool:
    """A finite number that converts to a float (an int past 1e308 doesn't)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(opts: JobOpts, key: str, *, allow_negative: bool = False) -> float | None:
    value = opts.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InvalidOptions(f"option {key!r} must be a number of seconds, got {value!r}")
    if not allow_negative and value < 0:
        raise InvalidOptions(f"option {key!r} must not be negative, got {value!r}")
    return float(value)


def _text(opts: JobOpts, key: str) -> str | None:
    value = opts.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidOptions(f"option {key!r} must be a non-empty string, got {value!r}")
    return value


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()  # naive datetimes are local time, as datetime.timestamp() says
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InvalidOptions(
            f"option 'run_at' must be a datetime or a unix timestamp, got {value!r}"
        )
    return float(value)


def due_time(opts: JobOpts, now_epoch_s: float) -> tuple[float, float]:
    """(run_at_ts, make_after): `run_at` wins over `after`, both become absolute."""
    after = _number(opts, "after") or 0.0
    if opts.get("run_at") is not None:
        run_at_ts = _epoch(opts["run_at"])
        return run_at_ts, run_at_ts - now_epoch_s
    return now_epoch_s + after, after


def _check_routing(opts: JobOpts, strict_node: bool) -> None:
    node, not_node = _text(opts, "node"), _text(opts, "not_node")
    if strict_node and node is not None and node == not_node:
        # The Ruby distributor hangs forever on this; we refuse it up front.
        raise InvalidOptions(
            f"node == not_node == {node!r} with always_use_specified_node: it could never run"
        )


def _lock_key(name: str, args: JobArgs, lock: Any) -> str | None:
    if lock is None or lock is False:
        return None
    if lock is True:
        return f"lock:{name}:{canonical_json(args)}"
    if isinstance(lock, str) and lock:
        return lock
    raise InvalidOptions(f"option 'lock' must be True or a non-empty key string, got {lock!r}")


# Integers crossing the wire (msgpack) and stored in Redis must fit a signed 64-bit integer.
INT_OPTION_MIN: Final = -(2**63)
INT_OPTION_MAX: Final = 2**63 - 1


def _int_option(opts: JobOpts, key: str, minimum: int = INT_OPTION_MIN) -> int | None:
    value = opts.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptions(f"option {key!r} must be an integer, got {value!r}")
    if not minimum <= value <= INT_OPTION_MAX:
        raise InvalidOptions(
            f"option {key!r} must be an integer in {minimum}..{INT_OPTION_MAX} "
            f"(it crosses the wire as a 64-bit integer), got {value!r}"
        )
    return value


def build_record(
    job_id: str,
    name: str,
    args: JobArgs,
    opts: JobOpts,
    *,
    now_epoch_s: float,
    distributor: str = "",
    default_priority: int = 0,
    strict_node: bool = False,
) -> JobRecord:
    """Validate `opts` once and build the record (docs/semantics.md §1, §7).

    Raises `InvalidOptions` (a ValueError) for unknown keys, wrong types and contradictions.
    Neither `args` nor `opts` is mutated.
    """
    untrusted: object = name  # callers from untyped code pass anything
    if not isinstance(untrusted, str) or not untrusted or len(untrusted) > MAX_NAME_CHARS:
        raise InvalidOptions(
            f"job name must be a non-empty string of at most {MAX_NAME_CHARS} characters, "
            f"got {str(name)[:60]!r}{'...' if len(str(name)) > 60 else ''}"
        )
    if not opts:  # the common case, on the enqueue hot path: nothing to validate
        return JobRecord(
            id=job_id,
            name=name,
            args=args,
            run_at_ts=now_epoch_s,
            distributor=distributor,
            priority=default_priority,
        )
    unknown = set(opts) - ENQUEUE_OPTIONS
    if unknown:
        raise InvalidOptions(
            f"unknown enqueue option(s) {sorted(unknown)}; allowed: {sorted(ENQUEUE_OPTIONS)}"
        )
    _check_routing(opts, strict_node)
    cron = _cron_schedule(opts)
    if cron is not None:
        run_at_ts = cron.next_after(now_epoch_s)
        make_after = run_at_ts - now_epoch_s
    else:
        run_at_ts, make_after = due_time(opts, now_epoch_s)
    retry_strategy = opts.get("retry_strategy")
    if retry_strategy is not None and retry_strategy not in RETRY_STRATEGIES:
        raise InvalidOptions(f"retry_strategy must be one of {sorted(RETRY_STRATEGIES)}")
    period = _number(opts, "period") or 0.0
    part = opts.get("part")
    if (opts.get("batch") is None) != (part is None):
        raise InvalidOptions("options 'batch' and 'part' go together")
    return JobRecord(
        id=job_id,
        name=name,
        args=args,
        run_at_ts=run_at_ts,
        make_after=make_after,
        period=period,
        defer=bool(opts.get("defer", False)),
        defer_process=_defer_process(opts),
        cron=None if cron is None else cron.expression,
        tz=None if cron is None or cron.tz == "UTC" else cron.tz,
        catch_up=bool(opts.get("catch_up", False)),
        node=_text(opts, "node"),
        not_node=_text(opts, "not_node"),
        distributor=distributor,
        priority=_priority(opts, default_priority),
        max_attempt=_int_option(opts, "max_attempt", minimum=1),
        retry_strategy=retry_strategy,
        max_run_time=_positive(opts, "max_run_time"),
        enqueue_id=_text(opts, "enqueue_id"),
        perform_id=_text(opts, "perform_id"),
        duplicate_delay=_number(opts, "duplicate_delay"),
        # loner (resque-lock-timeout) is an extra enqueue-time check on top of the run lock.
        lock=_lock_key(
            name, args, True if opts.get("loner") and opts.get("lock") is None else opts.get("lock")
        ),
        lock_timeout=_number(opts, "lock_timeout"),
        loner=bool(opts.get("loner", False)),
        batch=_text(opts, "batch"),
        part=None if part is None else str(part),
    )


def _cron_schedule(opts: JobOpts) -> CronSchedule | None:
    """Validate `cron` / `tz` / `catch_up` (cron.py); a cron job has no other timing option."""
    if opts.get("cron") is None:
        if opts.get("tz") is not None or opts.get("catch_up"):
            raise InvalidOptions("options 'tz' and 'catch_up' need a 'cron' schedule")
        return None
    clashing = sorted(k for k in ("period", "after", "run_at") if opts.get(k) is not None)
    if clashing:
        raise InvalidOptions(
            f"option 'cron' can't be combined with {clashing}: the schedule sets every due time"
        )
    return CronSchedule.parse(opts["cron"], opts.get("tz"))


def _defer_process(opts: JobOpts) -> bool:
    defer = opts.get("defer", False)
    if isinstance(defer, str):
        if defer != "process":
            raise InvalidOptions(
                f"option 'defer' must be True (thread pool) or 'process' (process pool), "
                f"got {defer!r}"
            )
        return True
    return False


def _priority(opts: JobOpts, default: int) -> int:
    value = _int_option(opts, "priority")
    return default if value is None else value


def _positive(opts: JobOpts, key: str) -> float | None:
    value = _number(opts, key)
    if value is not None and value <= 0:
        raise InvalidOptions(f"option {key!r} must be positive, got {value!r}")
    return value


# --- timing rules -------------------------------------------------------------------------


def retry_delay(attempt: int, strategy: str, retry_multiplier: float) -> float:
    """Seconds before the next attempt, `attempt` being the attempts made so far (>= 1).

    linear (JobReactor): attempt × retry_multiplier → 5, 10, 15 … s by default.
    exponential (delayed_job): attempt**4 + 5 → 6, 21, 86 … s.
    """
    if strategy == "exponential":
        return float(attempt**4 + 5)
    return attempt * retry_multiplier


def next_due(record: JobRecord, now_epoch_s: float) -> float:
    """A periodic job's next run: its cron schedule's next tick, else its `period` grid."""
    if record.cron is not None:
        return next_cron_due(record.cron, record.tz, max(now_epoch_s, record.run_at_ts))
    return next_periodic_due(record.run_at_ts, record.period, now_epoch_s)


def next_periodic_due(previous_due: float, period: float, now: float) -> float:
    """The next run on the job's own grid (no drift); runs missed while busy are skipped."""
    steps = max(1, math.ceil((now - previous_due) / period)) if now > previous_due else 1
    return previous_due + steps * period


# --- errors as data ------------------------------------------------------------------------


def error_value(exc: BaseException) -> dict[str, str]:
    """How an exception crosses the wire and sits in storage (docs/semantics.md §3)."""
    return {
        "class": _class_name(exc),
        "message": str(exc),
        "traceback": getattr(exc, "traceback_text", "")
        or "".join(traceback.format_exception(exc, limit=20))[-4000:],
    }


def _class_name(exc: BaseException) -> str:
    """The exception's class name; for an error raised in the process pool, the original's."""
    return getattr(exc, "error_class", None) or type(exc).__name__


def error_text(exc: BaseException) -> str:
    """`last_error` as the Ruby record stores it: "Class: message"."""
    return f"{_class_name(exc)}: {exc}"
