"""Cron schedules: the `cron` / `tz` / `catch_up` enqueue options (issue 21).

A cron job is a periodic job whose next due time comes from its expression instead of a fixed
`period` (job.py `next_due`); the node keeps it on its one timer heap like any periodic job.
Parsing and iteration are cronsim's (maintained, Debian-cron semantics, seconds as an optional
leading sixth field); this module only adds what cronsim leaves open:

- Daylight saving time, as cron users expect (docs/decisions.md, "Wave 3 — issue 21"): a local
  time that doesn't exist (clocks jump forward over it) doesn't run — cronsim would run it at
  the first minute after the gap, Debian-style, and we skip that tick; a local time that occurs
  twice (clocks go back) runs once, at its first occurrence, for a schedule that names its hours.
  A schedule with `*` in the hour field keeps its interval in real time through both.
- Missed ticks: a tick found more than `MISSED_TICK_GRACE_S` in the past when a node (re)schedules
  the job (node restart, no node up at the time) is skipped, not replayed; `catch_up=True` runs
  the last missed one once, then the schedule goes on.

Pure: no clock. Callers pass wall-clock seconds in.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cronsim import CronSim, CronSimError

from jobreactor.errors import InvalidOptions

if TYPE_CHECKING:
    from jobreactor.job import JobRecord

logger = logging.getLogger("jobreactor.node")

DEFAULT_TZ: Final = "UTC"

# A tick this late when a node (re)schedules the job counts as missed (the node was down, or no
# node was up): long enough that a busy node or a slow hand-over doesn't lose a tick, short enough
# that a restart minutes later doesn't replay it.
MISSED_TICK_GRACE_S: Final = 2.0

# Ticks cronsim may step over (gap fix-ups, repeated hours) before we give up on an expression:
# a real schedule yields a runnable tick within two of them.
_MAX_SKIPPED_TICKS: Final = 16


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A validated cron expression in an IANA time zone."""

    expression: str
    tz: str = DEFAULT_TZ

    @classmethod
    def parse(cls, expression: object, tz: object = None) -> CronSchedule:
        """Validate once (enqueue); raises `InvalidOptions` saying what is wrong."""
        if not isinstance(expression, str) or not expression.strip():
            raise InvalidOptions(f"option 'cron' must be a cron expression, got {expression!r}")
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise InvalidOptions(
                f"option 'cron' {expression!r} has {len(fields)} fields: give 5 "
                "(minute hour day month weekday) or 6 (a leading seconds field)"
            )
        zone = DEFAULT_TZ if tz is None else tz
        if not isinstance(zone, str) or not zone:
            raise InvalidOptions(f"option 'tz' must be an IANA time zone name, got {tz!r}")
        schedule = cls(" ".join(fields), zone)
        try:
            schedule._zone()
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidOptions(
                f"option 'tz' {zone!r} is not a known IANA time zone (e.g. 'Europe/Berlin')"
            ) from exc
        try:
            CronSim(schedule.expression, dt.datetime.now(dt.UTC))
        except (CronSimError, ValueError) as exc:
            raise InvalidOptions(f"option 'cron' {expression!r} is not valid: {exc}") from exc
        return schedule

    def _zone(self) -> dt.tzinfo:
        return _zone(self.tz)

    def next_after(self, after_epoch_s: float) -> float:
        """The first runnable tick strictly after `after_epoch_s` (wall-clock seconds)."""
        start = dt.datetime.fromtimestamp(after_epoch_s, self._zone())
        sim = CronSim(self.expression, start)
        for _ in range(_MAX_SKIPPED_TICKS):
            tick = next(sim)
            if self._runs_at(sim, tick):
                return tick.timestamp()
        raise InvalidOptions(f"cron {self.expression!r} has no runnable tick in {self.tz}")

    def _runs_at(self, sim: CronSim, tick: dt.datetime) -> bool:
        """False for a tick cronsim moved out of a DST gap, or a second run of a repeated time."""
        if self.tz == DEFAULT_TZ:
            return True
        if not (
            tick.second in sim.seconds and tick.minute in sim.minutes and tick.hour in sim.hours
        ):
            return False  # cronsim's Debian fix-up: the asked-for local time doesn't exist
        hours_named = not self.expression.split()[-4].startswith("*")
        return not (hours_named and tick.fold == 1 and _is_repeated(tick))


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> dt.tzinfo:
    return dt.UTC if name == DEFAULT_TZ else zoneinfo.ZoneInfo(name)


def _is_repeated(tick: dt.datetime) -> bool:
    """A local time that occurs twice (the hour clocks go back over)."""
    return tick.replace(fold=0).utcoffset() != tick.replace(fold=1).utcoffset()


def next_cron_due(expression: str, tz: str | None, after_epoch_s: float) -> float:
    """The next tick of a stored schedule after `after_epoch_s`."""
    return CronSchedule(expression, tz or DEFAULT_TZ).next_after(after_epoch_s)


def settle_missed(
    expression: str, tz: str | None, catch_up: bool, due_epoch_s: float, now_epoch_s: float
) -> float:
    """The due time to schedule: `due_epoch_s`, unless that tick was missed (module docstring)."""
    if now_epoch_s - due_epoch_s <= MISSED_TICK_GRACE_S:
        return due_epoch_s
    if catch_up:
        return now_epoch_s  # the last missed tick runs once, now
    return next_cron_due(expression, tz, now_epoch_s)


def skip_missed_tick(record: JobRecord, now_epoch_s: float, node_name: str) -> None:
    """A cron job's tick missed while no node ran it: skip it, or run it now with catch_up."""
    assert record.cron is not None
    due = settle_missed(record.cron, record.tz, record.catch_up, record.run_at_ts, now_epoch_s)
    if due != record.run_at_ts:
        logger.info(
            "%s: cron job %s (%r) missed its tick %.0fs ago; %s",
            node_name,
            record.id,
            record.name,
            now_epoch_s - record.run_at_ts,
            "running it now (catch_up)" if record.catch_up else "skipped to the next one",
        )
        record.run_at_ts = due
