"""Requests sent from a background thread while a test reloads, kills or scales workers."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from tests.web.servers import request_all


class Load:
    """Sends batches of requests (distinct n) until stopped; keeps every answer."""

    def __init__(self, url: str, path: str = "/enqueue/{n}", batch: int = 20) -> None:
        self.answers: dict[int, dict[str, Any]] = {}
        self.failed: list[int] = []
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(url, path, batch), daemon=True)
        self._thread.start()

    def _run(self, url: str, path: str, batch: int) -> None:
        while not self._stop.is_set():
            numbers = [next(self._numbers) for _ in range(batch)]
            answers, failed = request_all(url, numbers, path, threads=4)
            with self._lock:
                self.answers.update(answers)
                self.failed += failed

    def pids(self) -> set[int]:
        with self._lock:
            return {answer["pid"] for answer in self.answers.values()}

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def stop(self) -> dict[int, dict[str, Any]]:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()
        return self.answers
