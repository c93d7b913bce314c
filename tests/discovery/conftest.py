"""Discovery tests: one group per test (a unique redis prefix), short registry timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.redis_server import RedisServer, unique_prefix

ROOT = Path(__file__).resolve().parents[2]

# Fast enough for tests, still ttl > beat and grace > ttl (as config requires).
FAST = {"registry_beat": 0.2, "registry_ttl": 0.8, "adopt_grace": 1.5}


@pytest.fixture
def group(redis_server: RedisServer) -> dict[str, Any]:
    """Config for a fresh group: discovery on the test Redis, its own prefix, fast beats."""
    return {"discovery_url": redis_server.url, "redis_prefix": unique_prefix(), **FAST}


class Producer:
    """`python -m tests.discovery.producer` as a real process (a web worker stand-in)."""

    def __init__(
        self, tmp: Path, config: dict[str, Any], count: int, storage: str = "memory", **more: Any
    ) -> None:
        self.out = tmp / f"producer-{uuid.uuid4().hex[:8]}.jsonl"
        self.out.touch()
        self.log = self.out.with_suffix(".log")
        delay, slow = more.pop("delay", 0.0), more.pop("slow", 0)
        env = dict(os.environ)
        for key, value in {**config, "hiredis_url": config["discovery_url"], **more}.items():
            env[f"JOBREACTOR_{key.upper()}"] = str(value)
        args = [sys.executable, "-m", "tests.discovery.producer", str(self.out), str(count)]
        args += [storage, str(delay), str(slow)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=log)

    def lines(self, what: str | None = None) -> list[dict[str, Any]]:
        rows = [json.loads(x) for x in self.out.read_text().splitlines() if x.strip()]
        return [row for row in rows if what is None or row["what"] == what]

    def ready(self, timeout: float = 20.0) -> dict[str, Any]:
        wait_until(lambda: bool(self.lines("ready")) or self.proc.poll() is not None, timeout)
        assert self.lines("ready"), self.log.read_text()
        return self.lines("ready")[0]

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def producers(tmp_path: Path) -> Iterator[Callable[..., Producer]]:
    made: list[Producer] = []

    def start(config: dict[str, Any], count: int, storage: str = "memory", **more: Any) -> Producer:
        producer = Producer(tmp_path, config, count, storage, **more)
        made.append(producer)
        return producer

    yield start
    for producer in made:
        producer.terminate()
