"""Flow control on a job definition: `Limit(concurrency=N, key=...)`, `Limit(rate="N/m", ...)`.

This module is pure: the `Limit` a user writes, its key template over a job's args, and the
bookkeeping of slots and rate windows with `now` passed in (memory storage uses it as is;
the Redis scripts in `storage/limits.py` do the same on Redis's clock). No I/O, no clock.

A *slot name* says which counter a job takes: `<job name>:<c|r>:<resolved key>`. A constant
key is one counter for that job; `"{customer}"` is one counter per customer. Limits are scoped
to the job that declares them (README "Limits").
"""

from __future__ import annotations

import math
import re
import string
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from jobreactor.errors import InvalidArgs, InvalidOptions

__all__ = [
    "Limit",
    "LimitKeyError",
    "RateLog",
    "SlotRef",
    "SlotTable",
    "limit_gauges",
    "parse_rate",
    "slots_for",
]

_PERIODS_S: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
# A field of a key template: a name, or a dotted path into nested dicts ("{order.customer}").
_FIELD: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Keys of waiting jobs exported as metric labels per node; the rest are summed under "other"
# (a key per customer must not grow Prometheus without bound).
MAX_LABELLED_KEYS: Final = 20
# Sweep idle rate windows once per this many acquisitions (amortised O(1)).
_SWEEP_EVERY: Final = 1024


class LimitKeyError(InvalidArgs):
    """A limit's key names an arg the job does not have: the job fails at once, no retries."""


def parse_rate(rate: str) -> tuple[int, float]:
    """`"30/m"` -> `(30, 60.0)`: so many starts per period (seconds). Raises InvalidOptions."""
    text: object = rate  # from user code: may be anything
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise InvalidOptions(
            f"Limit rate must look like '30/m' (N/s, N/m or N/h, N>=1), got {rate!r}"
        )
    return int(match.group(1)), _PERIODS_S[match.group(2)]


def _template(key: str) -> tuple[tuple[str, str | None], ...]:
    """`"a-{x}"` -> `(("a-", "x"),)`: literal text, then the arg it is followed by (or None)."""
    try:
        parsed = list(string.Formatter().parse(key))
    except ValueError as exc:
        raise InvalidOptions(f"Limit key {key!r} is not a valid template: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not _FIELD.match(name) or spec or conversion):
            raise InvalidOptions(
                f"Limit key {key!r}: {{{name}}} must name an arg (or a dotted path into one), "
                "without conversions or format specs"
            )
        parts.append((literal, name))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of a job definition.

    Args:
        concurrency: at most this many attempts of the job run at once per key.
        rate: at most N starts per second, minute or hour per key: `"N/s"`, `"N/m"`, `"N/h"`.
        key: a template over the job's args (`"{customer}"`); a constant is one key for the job.

    Exactly one of `concurrency` and `rate` is given. Raises InvalidOptions otherwise.
    """

    concurrency: int | None = None
    rate: str | None = None
    key: str = "*"
    parts: tuple[tuple[str, str | None], ...] = field(init=False, repr=False, compare=False)
    amount: int = field(init=False, repr=False, compare=False)
    period_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise InvalidOptions("Limit takes exactly one of concurrency=N or rate='N/m'")
        key: object = self.key
        if not isinstance(key, str) or not key:
            raise InvalidOptions(f"Limit key must be a non-empty string, got {self.key!r}")
        if self.concurrency is not None:
            if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int):
                raise InvalidOptions(f"Limit concurrency must be an int, got {self.concurrency!r}")
            if self.concurrency < 1:
                raise InvalidOptions(f"Limit concurrency must be >= 1, got {self.concurrency}")
            amount, period_s = self.concurrency, math.inf
        else:
            amount, period_s = parse_rate(str(self.rate))
        object.__setattr__(self, "parts", _template(self.key))
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "period_s", period_s)

    @property
    def kind(self) -> str:
        """ "c" for a concurrency limit, "r" for a rate limit (part of the slot name)."""
        return "c" if self.concurrency is not None else "r"

    def key_for(self, args: Mapping[str, Any]) -> str:
        """The key of one job: the template filled from `args`. Raises LimitKeyError."""
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                out.append(_escape(str(self._lookup(args, name))))
        return "".join(out)

    def _lookup(self, args: Mapping[str, Any], name: str) -> Any:
        value: Any = args
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise LimitKeyError(
                    f"Limit key {self.key!r} needs arg {name!r}, which this job's args lack; "
                    "pass it at enqueue or change the key"
                )
            value = value[part]
        return value


def _escape(text: str) -> str:
    # Braces would end a Redis hash tag early; "%" keeps the escape unambiguous.
    if "{" in text or "}" in text or "%" in text:
        return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return text


def check_limits(name: str, limits: Iterable[Any]) -> tuple[Limit, ...]:
    """A definition's `limits=[...]`: Limits only, no two of one kind on one key template."""
    if isinstance(limits, Limit | str) or not isinstance(limits, Iterable):
        raise InvalidOptions(f"@job({name!r}): limits takes a list of Limit, got {limits!r}")
    out = tuple(limits)
    seen: set[tuple[str, str]] = set()
    for limit in out:
        if not isinstance(limit, Limit):
            raise InvalidOptions(f"@job({name!r}): limits must be Limit objects, got {limit!r}")
        if (limit.kind, limit.key) in seen:
            raise InvalidOptions(f"@job({name!r}): two limits of one kind on key {limit.key!r}")
        seen.add((limit.kind, limit.key))
    # Concurrency first: a job refused a run slot then uses no rate token.
    return tuple(sorted(out, key=lambda limit: limit.kind))


@dataclass(frozen=True, slots=True)
class SlotRef:
    """One counter a job takes: `name` is `<job>:<c|r>:<key>`; `key` is the key alone."""

    name: str
    limit: Limit
    job: str
    key: str

    @property
    def label(self) -> str:
        """What metrics and dashboards show: `concurrency:<key>` or `rate:<key>`."""
        return f"{'concurrency' if self.limit.kind == 'c' else 'rate'}:{self.key}"


def slots_for(job_name: str, limits: Sequence[Limit], args: Mapping[str, Any]) -> list[SlotRef]:
    """The counters one attempt of `job_name` takes, in order. Raises LimitKeyError."""
    out = []
    for limit in limits:
        key = limit.key_for(args)
        out.append(SlotRef(f"{job_name}:{limit.kind}:{key}", limit, job_name, key))
    return out


class SlotTable:
    """Concurrency slots: per slot name, the members holding it and when their lease ends.

    Pure (time is `now`, any monotonic seconds). `lease_s=None`: held until released.
    """

    def __init__(self) -> None:
        self._held: dict[str, dict[str, float]] = {}

    def acquire(
        self, slot: str, member: str, limit: int, now: float, lease_s: float | None = None
    ) -> float | None:
        """Take a slot: None if granted (or already held by `member`), else the seconds until
        the earliest holder's lease ends (`math.inf`: only a release frees one)."""
        holders = self._held.setdefault(slot, {})
        if member not in holders and len(holders) >= limit:  # full: drop lapsed leases first
            for other, expiry in list(holders.items()):
                if expiry <= now:
                    del holders[other]
        if member in holders or len(holders) < limit:
            holders[member] = math.inf if lease_s is None else now + lease_s
            return None
        return min(holders.values()) - now

    def release(self, slot: str, member: str) -> bool:
        holders = self._held.get(slot)
        if holders is None or holders.pop(member, None) is None:
            return False
        if not holders:
            del self._held[slot]
        return True

    def renew(self, slot: str, member: str, now: float, lease_s: float) -> bool:
        """Extend `member`'s lease; False if it no longer holds the slot (it expired)."""
        holders = self._held.get(slot)
        if holders is None or member not in holders or holders[member] <= now:
            return False
        holders[member] = now + lease_s
        return True

    def holding(self, slot: str, now: float) -> int:
        return sum(1 for expiry in self._held.get(slot, {}).values() if expiry > now)


class RateLog:
    """Rate windows: per slot name, the start times of the last period (a sliding log).

    A start is granted only if fewer than `limit` starts happened in the `period_s` before
    `now`; so no window of that length ever holds more than `limit` starts. Pure.
    """

    def __init__(self) -> None:
        self._starts: dict[str, deque[tuple[float, str]]] = {}
        self._periods_s: dict[str, float] = {}
        self._calls = 0

    def acquire(
        self, slot: str, member: str, limit: int, period_s: float, now: float
    ) -> float | None:
        """None if granted (the start is recorded), else the seconds until the window allows."""
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._sweep(now)
        self._periods_s[slot] = period_s
        starts = self._starts.setdefault(slot, deque())
        while starts and starts[0][0] <= now - period_s:
            starts.popleft()
        if len(starts) < limit:
            starts.append((now, member))
            return None
        return starts[0][0] + period_s - now

    def forget(self, slot: str, member: str) -> bool:
        """Take back `member`'s start (its job did not start after all)."""
        starts = self._starts.get(slot)
        if not starts:
            return False
        for entry in starts:
            if entry[1] == member:
                starts.remove(entry)
                return True
        return False

    def _sweep(self, now: float) -> None:
        periods = self._periods_s
        idle = [s for s, log in self._starts.items() if not log or log[-1][0] <= now - periods[s]]
        for slot in idle:
            del self._starts[slot]
            del periods[slot]


def limit_gauges(nodes: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, str], float]]:
    """`jobreactor_limit_waiting{node, job_name, limit_key}` from `Node.stats()["limits"]`."""
    out: list[tuple[str, dict[str, str], float]] = []
    for node in nodes:
        limits = node.get("limits") or {}
        for row in limits.get("waiting", ()):
            labels = {
                "node": str(node.get("name", "")),
                "job_name": str(row.get("job_name", "")),
                "limit_key": str(row.get("limit_key", "")),
            }
            out.append(("limit_waiting", labels, float(row.get("waiting", 0))))
    return out
