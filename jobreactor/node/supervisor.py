"""A node per core: `processes = N` (`jobreactor node --processes N`), issue 21.

The supervisor is the process the user starts. It runs no jobs: it starts N children, each
`python -m jobreactor node` with the same arguments plus `--name <name>-<i> --child-of <pid>`
(a subprocess, not a multiprocessing fork: a child is exactly the node a user could start by
hand, with its own loop, links and storage, and nothing of the supervisor's state leaks into
it). `{hostname}`/`{pid}` in the name are expanded by each child, so `w-{hostname}` gives
`w-{hostname}-1` → `w-myhost-1`.

- A child that dies (crash, kill -9, exit != 0) is started again under the same name after a
  backoff (0.5 s doubling to 30 s; reset once a child has lived 30 s), so a Redis node resumes
  its jobs (retry_jobs_at_start) and the distributor sees it reconnect.
- Recycling (Celery's max_tasks_per_child / max_memory_per_child): a child checks itself after
  each attempt it starts (`Recycler`): past `max_jobs_per_process` attempts or above
  `max_memory_mb` resident memory it stops itself through the node's own graceful stop (it takes
  no more jobs, hands back what it hasn't started, finishes what runs, exits 0); a child that
  exits 0 while the supervisor isn't stopping is replaced at once.
- `metrics_port = P` gives child i the port P + i - 1 (through JOBREACTOR_METRICS_PORT).
- Signals: SIGTERM and SIGINT are forwarded to every child (the first drains, a second stops
  now, as for a single node); the supervisor then waits for them and exits 0 if every child
  stopped cleanly. Children run in their own process group, so a terminal's Ctrl-C reaches them
  once, through the supervisor. A child whose supervisor vanishes (kill -9) sees its stdin pipe
  close and stops gracefully (`watch_supervisor`): no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from jobreactor.config import NodeConfig

logger = logging.getLogger("jobreactor.supervisor")

_BACKOFF_FIRST_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
# A child that lived this long was healthy: its next crash starts the backoff over.
_HEALTHY_AFTER_S: Final = 30.0
# Resident memory is read at most this often per child (after an attempt starts), not per job.
_MEMORY_CHECK_EVERY_S: Final = 1.0


def child_name(name: str, index: int) -> str:
    """The name of child `index` (1-based): `<name>-<index>`; placeholders stay for the child."""
    return f"{name}-{index}"


def child_argv(argv: Sequence[str], name: str, index: int, supervisor_pid: int) -> list[str]:
    """The child's command line: ours (argv[1:] of `jobreactor ...`) with its name and parent."""
    own = _without_options(argv, {"--processes", "--name", "--child-of"})
    return [
        sys.executable,
        "-m",
        "jobreactor",
        *own,
        "--processes",
        "1",
        "--name",
        child_name(name, index),
        "--child-of",
        str(supervisor_pid),
    ]


def _without_options(argv: Sequence[str], drop: set[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        key = arg.split("=", 1)[0]
        if key in drop:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


@dataclass(slots=True)
class _Child:
    index: int
    name: str
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive unhealthy exits: the backoff exponent
    restarts: int = 0


class Supervisor:
    """Starts, watches and replaces N node processes; see the module docstring."""

    def __init__(
        self, name: str, processes: int, argv: list[str], metrics_port: int | None = None
    ) -> None:
        self.name = name
        self.processes = processes
        self.argv = argv  # the `jobreactor` arguments, e.g. ["node", "--config", "node.toml"]
        self.metrics_port = metrics_port
        self.children = [_Child(i, child_name(name, i)) for i in range(1, processes + 1)]
        self._stopping = asyncio.Event()
        self._signals = 0
        self._forwarded: set[int] = set()
        self._clean = True

    def __repr__(self) -> str:
        alive = sum(1 for c in self.children if c.proc is not None and c.proc.returncode is None)
        return f"<Supervisor {self.name} processes={self.processes} alive={alive}>"

    async def run(self) -> int:
        """Until every child has stopped after a signal; 0 if all stopped cleanly."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        logger.info(
            "supervisor %d: starting %d node processes %s",
            os.getpid(),
            self.processes,
            ", ".join(c.name for c in self.children),
        )
        await asyncio.gather(*(self._keep(child) for child in self.children))
        logger.info("supervisor %d: every node process stopped", os.getpid())
        return 0 if self._clean else 1

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        self._forwarded.add(signum)
        self._stopping.set()
        logger.info(
            "supervisor: %s received; %s every node process",
            signal.Signals(signum).name,
            "draining" if self._signals == 1 else "stopping",
        )
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    async def _keep(self, child: _Child) -> None:
        """Run `child`, and again after it exits, until the supervisor stops."""
        while not self._stopping.is_set():
            await self._start(child)
            assert child.proc is not None
            code = await child.proc.wait()
            lived = time.monotonic() - child.started_at
            if self._stopping.is_set():
                # Killed by the very signal we forwarded: its loop had closed (its handlers with
                # it), so it had already finished stopping, e.g. recycling itself at that moment.
                if code not in (0, *(-s for s in self._forwarded)):
                    self._clean = False
                    logger.warning("node process %s stopped with exit code %s", child.name, code)
                return
            await self._after_exit(child, code, lived)

    async def _after_exit(self, child: _Child, code: int, lived: float) -> None:
        child.restarts += 1
        if code == 0:  # it recycled itself (drained first): replace it now
            child.failures = 0
            logger.info("node process %s recycled; starting a fresh one", child.name)
            return
        child.failures = 1 if lived >= _HEALTHY_AFTER_S else child.failures + 1
        delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (child.failures - 1))
        logger.warning(
            "node process %s died (exit code %s after %.1fs); restarting it in %.1fs",
            child.name,
            code,
            lived,
            delay,
        )
        await self._sleep_unless_stopping(delay)

    async def _sleep_unless_stopping(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _start(self, child: _Child) -> None:
        argv = child_argv(self.argv, self.name, child.index, os.getpid())
        # stdin is a pipe the child watches: when we vanish, it closes and the child drains.
        env = None
        if self.metrics_port:  # one port per child: metrics_port, +1, … (0 stays "any free")
            port = str(self.metrics_port + child.index - 1)
            env = {**os.environ, "JOBREACTOR_METRICS_PORT": port}
        child.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, process_group=0, env=env
        )
        child.started_at = time.monotonic()
        logger.info("node process %s started (pid %d)", child.name, child.proc.pid)
        if self._stopping.is_set():  # a signal came while it was starting: it drains too
            self._forwarded.add(signal.SIGTERM)
            child.proc.send_signal(signal.SIGTERM)


def run_supervisor(config: NodeConfig, argv: list[str]) -> int:
    """`jobreactor node` with `processes > 1` (or a recycling limit): supervise; exit code."""
    supervisor = Supervisor(config.name, config.processes, argv, config.metrics_port)
    return asyncio.run(supervisor.run())


# --- the child's side ----------------------------------------------------------------------------


class Recyclable(Protocol):
    """What a supervised child's recycling needs of its node (node.py's Node)."""

    def close_intake(self) -> None: ...

    def recycle_with(self, recycler: Recycler) -> None: ...


async def supervised_child(node: Recyclable, config: NodeConfig, supervisor_pid: int) -> None:
    """In a child, on its loop: follow the supervisor's life, and recycle past the limits."""
    watch_supervisor(asyncio.get_running_loop(), supervisor_pid)
    if config.max_jobs_per_process is not None or config.max_memory_mb is not None:

        def recycle() -> None:
            node.close_intake()  # at once: no job may slip in before the stop begins
            stop_self()

        node.recycle_with(Recycler(config.max_jobs_per_process, config.max_memory_mb, recycle))


def stop_self() -> None:
    """Stop this node process gracefully: the node's own SIGTERM path (drain, then exit 0)."""
    os.kill(os.getpid(), signal.SIGTERM)


def watch_supervisor(loop: asyncio.AbstractEventLoop, supervisor_pid: int) -> None:
    """Drain and exit when the supervisor's end of our stdin closes (it died, even by kill -9)."""

    def on_readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            logger.warning("supervisor %d is gone; this node process stops", supervisor_pid)
            stop_self()

    loop.add_reader(0, on_readable)


def resident_memory_mb() -> float:
    """This process's resident memory now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Recycler:
    """Counts a child's attempts and watches its memory; asks it to stop once, past a limit."""

    def __init__(
        self,
        max_jobs: int | None,
        max_memory_mb: float | None,
        stop: Callable[[], None] = stop_self,
        memory_mb: Callable[[], float] = resident_memory_mb,
    ) -> None:
        self.max_jobs = max_jobs
        self.max_memory_mb = max_memory_mb
        self.started = 0
        self.asked = False
        self._stop = stop
        self._memory_mb = memory_mb
        self._checked_at = -_MEMORY_CHECK_EVERY_S

    def attempt_started(self, now: float) -> None:
        """After each attempt starts (`now`: monotonic seconds)."""
        self.started += 1
        if self.asked:
            return
        if self.max_jobs is not None and self.started >= self.max_jobs:
            self._recycle(f"it started {self.started} jobs (max_jobs_per_process)")
        elif self.max_memory_mb is not None and now - self._checked_at >= _MEMORY_CHECK_EVERY_S:
            self._checked_at = now
            used = self._memory_mb()
            if used > self.max_memory_mb:
                self._recycle(f"it uses {used:.0f} MB (max_memory_mb={self.max_memory_mb:g})")

    def _recycle(self, why: str) -> None:
        self.asked = True
        logger.info("node process %d recycles: %s; draining, then a fresh one", os.getpid(), why)
        self._stop()
