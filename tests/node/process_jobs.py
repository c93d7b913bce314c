"""Job bodies for tests/node/test_process_pool.py, at module level: a pool process imports them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def crunch(args: dict[str, Any]) -> None:
    """CPU-bound until the file `args["flag"]` exists (written once the test saw the loop work)."""
    Path(args["started"]).write_text(str(os.getpid()))
    flag, spins = Path(args["flag"]), 0
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        spins += sum(i * i for i in range(20_000)) % 7  # burn CPU between looks
    args["pid"] = os.getpid()
    args["spun"] = spins >= 0


def add_one(args: dict[str, Any]) -> None:
    args["n"] += 1
    args["pid"] = os.getpid()


def boom(args: dict[str, Any]) -> None:
    raise ValueError(f"nope {args['n']}")
