"""Real web servers running examples/web, real `jobreactor node` processes, a concurrent client.

Every process gets `WEB_EXAMPLE_OUT`: the app's named feedback appends to `feedback.jsonl`
there, the node's job to `runs.jsonl` (examples/web/common.py, jobs/web_jobs.py), and the
tests read both files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_until
from tests.redis_server import _free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "web"


def _env(out: Path, extra: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join([str(EXAMPLES.parents[1]), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "WEB_EXAMPLE_OUT": str(out), "PYTHONPATH": path, **extra}


class Process:
    """A subprocess with its output in a log file; stopped by SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 45.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_logged(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.log_text(), timeout, f"{self.log.name}: {text!r}")


class WebServer(Process):
    """`gunicorn ...`/`uvicorn ...` (argv[0] a module) serving examples/web on a free port."""

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.out = tmp / "out"
        self.out.mkdir(exist_ok=True)
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        super().__init__(
            [sys.executable, "-m", *argv], tmp / "web.log", _env(self.out, env or {}), EXAMPLES
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def workers(self) -> set[int]:
        """The pids of the server's worker processes (its children)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return set()
        return {int(pid) for pid in children.split()}

    def has_workers(self, count: int) -> bool:
        return len(self.workers()) == count

    def addresses(self) -> dict[int, str]:
        """Worker pid -> its distributor's address, as the gunicorn hooks log them."""
        found = re.findall(
            r"\[(\d+)\] \[INFO\] jobreactor distributor listening on (\S+)", self.log_text()
        )
        return {int(pid): address for pid, address in found}

    def kill_worker(self, pid: int, timeout: float = 30.0) -> set[int]:
        """SIGKILL one worker (the master starts another); the workers once it has."""
        os.kill(pid, signal.SIGKILL)
        count = len(self.workers())
        wait_until(lambda: pid not in self.workers(), timeout, f"worker {pid} to be reaped")
        return self.wait_workers(count, timeout)

    def wait_serving(self, timeout: float = 30.0) -> None:
        def serving() -> bool:
            assert self.proc.poll() is None, f"server exited:\n{self.log_text()[-3000:]}"
            try:
                return httpx.get(f"{self.url}/hello", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(serving, timeout, "the web server to answer")

    def wait_workers(self, count: int, timeout: float = 30.0) -> set[int]:
        """Until `count` workers each have a distributor (gunicorn logs it per worker)."""

        def started() -> bool:
            pids = self.workers()
            text = self.log_text()
            listening = {p for p in pids if f"[{p}] [INFO] jobreactor distributor" in text}
            return len(pids) == count and listening == pids

        wait_until(started, timeout, f"{count} workers with a distributor")
        return self.workers()


class WebNode(Process):
    """`python -m jobreactor node` loading examples/web/jobs, finding distributors in Redis."""

    def __init__(self, tmp: Path, name: str, out: Path, **settings: Any) -> None:
        lines = [
            f"name = {json.dumps(name)}",
            f"job_directory = {json.dumps(str(EXAMPLES / 'jobs'))}",
            "reconnect_interval = 0.1",
            "shutdown_timeout = 5.0",
            'logger_method = "INFO"',
            "log_job_processing = false",
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        config = tmp / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        argv = [sys.executable, "-m", "jobreactor", "node", "--config", str(config)]
        super().__init__(argv, tmp / f"{name}.log", _env(out, {"NODE": name}), tmp)


def wait_linked(nodes: Iterable[WebNode], addresses: Iterable[str], timeout: float = 30.0) -> None:
    """Until every node works with every distributor in `addresses` (their logs say so)."""
    for node in nodes:
        for address in addresses:
            node.wait_logged(f"ready to work with distributor {address}", timeout)


def request_all(
    url: str, numbers: Iterable[int], path: str = "/enqueue/{n}", threads: int = 16
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """GET `path` for every n, `threads` at a time: (answers by n, the n that got none)."""
    answers: dict[int, dict[str, Any]] = {}
    failed: list[int] = []
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(base_url=url, timeout=30, limits=limits) as client:

        def one(n: int) -> None:
            try:
                response = client.get(path.format(n=n))
                response.raise_for_status()
                answers[n] = response.json()
            except httpx.HTTPError:
                failed.append(n)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, numbers))
    return answers, failed


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
