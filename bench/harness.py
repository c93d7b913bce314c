"""Processes and clocks for the bench: the in-process reactor, node processes, a Redis server.

Every wait here is bounded. Node processes and the Redis server are started by this module and
stopped by pid (SIGTERM, then SIGKILL after a grace period); nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where child processes import from (`python -m bench --compare` points it at a directory whose
# `jobreactor` is another checkout's; see compare.py).
RUN_ROOT = Path(os.environ.get("BENCH_RUN_ROOT") or REPO_ROOT)
JOB_DIRECTORY = Path(__file__).resolve().parent / "jobs"
NODE_START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A workload could not produce its figures; the message says why."""


class BenchTimeout(BenchError):
    """A bounded wait ran out."""


class RedisStorageUnavailable(BenchError):
    """The core refused `storage = "redis"` (not implemented yet, or it cannot reach Redis)."""


class RedisServerMissing(BenchError):
    """No `redis-server` binary on PATH."""


# --- small helpers --------------------------------------------------------------------------


def bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run `fn` in a daemon thread; its result, or BenchTimeout if it takes over `timeout` s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchTimeout(f"{what} did not return within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchTimeout(f"{what}: not reached within {timeout:g} s")
        time.sleep(interval)


def free_port(below: int | None = None) -> int:
    """A free loopback port (one under `below` if given)."""
    for _ in range(200):
        port = 0 if below is None else random.randint(20_000, below)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise BenchError(f"no free port under {below}")


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of `pid` (this process if None), from /proc/<pid>/status VmRSS."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS in {path}")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of `pid`, seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(RUN_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ProcessRegistry:
    """Every child this bench started, so an interrupted run can still stop them by pid."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs[proc.pid] = proc

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.pop(proc.pid, None)

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        stop_processes(procs)


REGISTRY = ProcessRegistry()


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each, wait up to `grace` s in total, then SIGKILL whatever is left."""
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    for p in procs:
        REGISTRY.discard(p)


# --- Redis server -----------------------------------------------------------------------------


class RedisServer:
    """A private `redis-server --save '' --appendonly no` on a free loopback port."""

    def __init__(self, workdir: Path, *, cluster: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerMissing("redis-server not installed")
        # A cluster node must have a port <= 55535 on Redis 7.0 (its bus was port + 10000).
        self.port = free_port() if not cluster else free_port(below=55_535)
        self.log = workdir / f"redis-{self.port}.log"
        extra: list[str] = []
        if cluster:
            folder = workdir / f"cluster-{self.port}"
            folder.mkdir(parents=True, exist_ok=True)
            extra = ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(folder / "nodes.conf"), "--cluster-port", str(free_port())]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir), *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        REGISTRY.add(self.proc)
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        try:
            wait_until(self._ping, 10, f"redis-server on port {self.port} answering PING", 0.05)
        except BenchTimeout:
            self.stop()
            raise
        self.version = str(self.client.info("server").get("redis_version", "?"))

    def _ping(self) -> bool:
        if self.proc.poll() is not None:
            raise BenchError(f"redis-server exited: {tail(self.log)}")
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 -- not up yet
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def flushdb(self, db: int) -> None:
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=30) as client:
            client.flushdb()

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        stop_processes([self.proc], grace=5)


class RedisClusterServers:
    """Three cluster-enabled redis-servers joined by `redis-cli --cluster create` (no replicas)."""

    def __init__(self, workdir: Path) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerMissing("redis-cli not installed")
        self.servers: list[RedisServer] = []
        try:
            for _ in range(3):
                self.servers.append(RedisServer(workdir, cluster=True))
            nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
            done = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise BenchError(f"redis-cli --cluster create failed: {done.stdout[-300:]!r}")
            wait_until(self._ok, 30, "cluster_state:ok on every master", 0.05)
        except BaseException:
            self.stop()
            raise

    def _ok(self) -> bool:
        for server in self.servers:
            info = server.client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text and "'cluster_state': 'ok'" not in text:
                return False
        return True

    def url(self, db: int = 0) -> str:
        return self.servers[0].url(0)  # a cluster has db 0 only

    @property
    def port(self) -> int:
        return self.servers[0].port

    def flushdb(self, db: int) -> None:
        for server in self.servers:
            server.flushdb(0)

    def used_memory(self) -> int:
        return sum(server.used_memory() for server in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


# --- nodes and the cluster --------------------------------------------------------------------


class NodeProcess:
    """`python -m jobreactor node --config node.toml`, logs to a file."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        distributor: tuple[str, int],
        storage: str,
        concurrency: int,
        redis_url: str | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.storage = storage
        self.config = workdir / f"node-{name}.toml"
        self.log = workdir / f"node-{name}.log"
        lines = [
            f'name = "{name}"',
            f'storage = "{storage}"',
            f'distributors = [["{distributor[0]}", {distributor[1]}]]',
            f'job_directory = "{JOB_DIRECTORY}"',
            f"concurrency = {concurrency}",
            "log_job_processing = false",
            'logger_method = "WARNING"',
        ]
        if redis_url:
            lines.append(f'redis_url = "{redis_url}"')
        self.config.write_text("\n".join(lines) + "\n")
        with self.log.open("wb") as log:
            profile = os.environ.get("BENCH_NODE_PROFILE")  # bench/profile.py --node
            prefix = ["-m", "cProfile", "-o", f"{profile}/node-{name}.prof"] if profile else []
            self.proc = subprocess.Popen(
                [sys.executable, *prefix, "-m", "jobreactor", "node", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=RUN_ROOT,
                env=_child_env(env),
            )
        REGISTRY.add(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is None:
            return
        log = tail(self.log)
        if self.storage == "redis" and "redis" in log.lower():
            raise RedisStorageUnavailable(_last_error_line(log) or f"node exited with {code}")
        raise BenchError(f"node {self.name} exited with code {code}: {_last_error_line(log)}")

    def stop(self) -> None:
        stop_processes([self.proc])


def _last_error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "exception" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


class Cluster:
    """One in-process Reactor with a distributor, plus node processes started through the CLI."""

    def __init__(
        self,
        workdir: Path,
        storage: str,
        concurrency: int,
        redis: RedisServer | RedisClusterServers | None = None,
        label: str = "bench",
        redis_db: int = 1,
    ) -> None:
        self.workdir = workdir
        self.storage = storage
        self.concurrency = concurrency
        self.redis = redis
        self.label = label
        self.redis_db = redis_db  # the node storage's db; db 0 is the peers' body's
        self.nodes: list[NodeProcess] = []
        self.reactor: Any = None
        self.address: tuple[str, int] | None = None
        self.distributor_storage = "memory"

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, n_nodes: int = 1) -> Cluster:
        from jobreactor import Reactor

        journal = self.distributor_storage == "redis" and self.redis is not None
        if (self.storage == "redis" or journal) and self.redis is not None:
            self.redis.flushdb(self.redis_db)  # no node may resume a previous run's jobs
        reactor = Reactor()
        reactor.config.update(
            log_job_processing=False, logger_method="WARNING", shutdown_timeout=5.0
        )
        if journal:
            assert self.redis is not None
            reactor.config.update(hiredis_url=self.redis.url(self.redis_db))
        self.reactor = reactor
        bounded(reactor.run, 30, "Reactor.run()")
        storage = "redis" if journal else "memory"
        host, port = bounded(
            lambda: reactor.start_distributor("127.0.0.1", 0, storage=storage),
            15,
            "start_distributor",
        )
        self.address = (str(host), int(port))
        for _ in range(n_nodes):
            self.add_node()
        return self

    def add_node(self) -> NodeProcess:
        assert self.address is not None
        name = f"{self.label}{len(self.nodes) + 1}"
        env = {"BENCH_REDIS_PORT": str(self.redis.port)} if self.redis else {}
        redis_url = (
            self.redis.url(self.redis_db) if self.storage == "redis" and self.redis else None
        )
        node = NodeProcess(
            name,
            self.workdir,
            self.address,
            self.storage,
            self.concurrency,
            redis_url,
            env,
        )
        self.nodes.append(node)
        self.wait_for_nodes([n.name for n in self.nodes])
        return node

    def node_info(self) -> list[dict[str, Any]]:
        return list(bounded(self.reactor.nodes, 10, "Reactor.nodes()"))

    def wait_for_nodes(self, names: list[str], timeout: float = NODE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(names)
        while True:
            for node in self.nodes:
                node.check_alive()
            have = {n.get("name") for n in self.node_info()}
            if wanted <= have:
                return
            if time.monotonic() > deadline:
                raise BenchTimeout(
                    f"nodes {sorted(wanted - have)} did not join within {timeout:g} s "
                    f"(log: {_last_error_line(tail(self.nodes[-1].log))})"
                )
            time.sleep(0.05)

    def check_nodes(self) -> None:
        for node in self.nodes:
            node.check_alive()

    def node_pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def close(self) -> None:
        """Nodes first (so the distributor's graceful stop has nothing to wait for), then it."""
        stop_processes([n.proc for n in self.nodes])
        reactor, self.reactor = self.reactor, None
        if reactor is not None:
            with contextlib.suppress(Exception):
                bounded(reactor.stop, 30, "Reactor.stop()")
