"""Log lines that could repeat without limit (one per hostile connection), at a bounded rate.

The first occurrence is logged at once; the ones that follow within `interval` seconds are
counted, and the next line logged says how many were left out. No timer: the count is flushed
by the next occurrence after the interval.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, level: int, interval: float = 10.0) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Lines left out since the last one logged."""
        return self._suppressed

    def __call__(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        if self._suppressed:
            message += " (and %d similar line(s) left out in the last %.0fs)"
            args = (*args, self._suppressed, self._interval)
            self._suppressed = 0
        self._logger.log(self._level, message, *args)
