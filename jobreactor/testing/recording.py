"""Outcomes as a test sees them: every report the app received, in order, waitable.

Both the in-process system and eager mode fill one `OutcomeLog`; tests wait on it with a
bound (a condition variable, no sleeping) and filter it by job name, id or outcome.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from jobreactor.protocol import ReportItem


@dataclass(frozen=True, slots=True)
class Outcome:
    """One report that reached the app: a success/error feedback, or a cancel."""

    job_id: str
    name: str
    outcome: str  # "success" | "error" | "cancelled"
    final: bool
    args: dict[str, Any]


class OutcomeLog:
    """Thread-safe list of `Outcome`s with bounded waits."""

    def __init__(self) -> None:
        self._items: list[Outcome] = []
        self._cond = threading.Condition()

    def __call__(self, name: str, item: ReportItem) -> None:
        """The distributor's observer hook."""
        outcome = Outcome(item.job_id, name, item.outcome, item.final, item.args)
        with self._cond:
            self._items.append(outcome)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def all(
        self, name: str | None = None, outcome: str | None = None, job_id: str | None = None
    ) -> list[Outcome]:
        """The outcomes so far, optionally only those of job `name`, kind `outcome`, id."""
        with self._cond:
            return self._matching(name, outcome, job_id)

    def successes(self, name: str | None = None) -> list[dict[str, Any]]:
        """The args of every success feedback (of job `name`), in order."""
        return [o.args for o in self.all(name, "success")]

    def errors(self, name: str | None = None) -> list[dict[str, Any]]:
        """The args of every error feedback (of job `name`), in order."""
        return [o.args for o in self.all(name, "error")]

    def wait(
        self,
        count: int = 1,
        *,
        name: str | None = None,
        outcome: str | None = None,
        timeout: float = 10.0,
    ) -> list[Outcome]:
        """Block until `count` matching outcomes arrived; AssertionError after `timeout`."""
        with self._cond:
            arrived = self._cond.wait_for(
                lambda: len(self._matching(name, outcome)) >= count, timeout
            )
            found = self._matching(name, outcome)
        if not arrived:
            what = f" of {name!r}" if name else ""
            raise AssertionError(
                f"waited {timeout}s for {count} {outcome or 'outcome'}(s){what}; got "
                f"{len(found)}: {found}"
            )
        return found

    def _matching(
        self, name: str | None, outcome: str | None, job_id: str | None = None
    ) -> list[Outcome]:
        return [
            o
            for o in self._items
            if (name is None or o.name == name)
            and (outcome is None or o.outcome == outcome)
            and (job_id is None or o.job_id == job_id)
        ]

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
