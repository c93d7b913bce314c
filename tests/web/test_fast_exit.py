"""`hooks(fast_exit=True)` (jobreactor.contrib.gunicorn): a recycling worker's process ends right
after jobreactor stops, without the interpreter's teardown (seconds under load, before
gunicorn forks the replacement: bench/recycle.py). What a normal exit gives the app still
happens: its atexit handlers run, buffered output is flushed, the exit code is 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = """
import atexit, sys, types
from jobreactor import Reactor
from jobreactor.contrib.gunicorn import hooks

reactor = Reactor(logger_method="WARNING")
post_worker_init, worker_exit = hooks("127.0.0.1", 0, reactor=reactor, fast_exit=True)


class Log:  # gunicorn's worker.log, as the hooks use it
    def info(self, message, *args):
        print(message % args)


worker = types.SimpleNamespace(log=Log(), cfg=types.SimpleNamespace(graceful_timeout=5))
post_worker_init(worker)
atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
sys.stdout.write("buffered, no newline")
worker_exit(None, worker)
raise SystemExit(3)  # not reached: the process ended in worker_exit
"""


@pytest.mark.timeout(60)
def test_fast_exit_ends_the_worker_after_its_atexit_handlers(tmp_path: Path) -> None:
    marker = tmp_path / "atexit.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBREACTOR_")}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(marker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "jobreactor distributor listening" in done.stdout
    assert "jobreactor stopped in" in done.stdout
    assert "buffered, no newline" in done.stdout  # flushed though it ended no line
    assert marker.read_text() == "atexit ran"
