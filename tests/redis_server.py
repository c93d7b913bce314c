"""A real redis-server on a free port, for the tests that need Redis (STYLE 22: no fakes).

`redis_server` is session-scoped: one server for the whole run. Tests keep apart by using a
unique key prefix each (`unique_prefix()`), never by flushing. A test that stops the server
(to see Redis go away and come back) should start its own with `RedisServer(tmp_path)`.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def unique_prefix() -> str:
    return f"jrtest-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port a cluster node accepts: Redis 7.0 refuses ports above 55535 in cluster mode
    (its bus port was port + 10000), whatever `--cluster-port` says."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port in 20000-55535")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server` without persistence, bound to 127.0.0.1 on a free port."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        aof: bool = False,
        extra: Sequence[str] = (),
        choose_port: Callable[[], int] = _free_port,
    ) -> None:
        self.aof = aof
        self.extra = list(extra)
        self._choose_port = choose_port
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not on PATH; `.ci/run` installs it "
                "(apt-get install -y redis-server). Redis tests fail rather than skip."
            )
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or choose_port()
        self.log = directory / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running:
            return self
        for _ in range(3):
            if self._launch():
                self._started_once = True
                return self
            # The free port was taken between choosing and binding it: choose again.
            self.port = self._choose_port()
        pytest.fail(f"redis-server could not bind a free port:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _launch(self) -> bool:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.directory),
            "--daemonize", "no",
            *self.extra,
        ]  # fmt: skip
        from tests.conftest import wait_until  # here: conftest imports this module

        with self.log.open("ab") as log:
            proc = self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(
                lambda: _ping(self.port) or proc.poll() is not None,
                START_TIMEOUT_S,
                f"a PONG from redis-server on {self.url}",
            )
        except AssertionError:
            self.stop()
            pytest.fail(f"redis-server gave no PONG in {START_TIMEOUT_S}s on {self.url}")
        if proc.poll() is not None:
            self.proc = None
            if not self._started_once and "in use" in self._log_tail():
                return False
            pytest.fail(f"redis-server exited at start:\n{self._log_tail()}")
        return True

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync (what AOF `everysec` must survive)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        """Stop it (clients then see connection errors); `start()` brings it back."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} running={self.running}>"


class RedisClusterServers:
    """A real Redis Cluster: three masters (no replicas) on free ports, slots spread evenly.

    `url` names the first master; clients find the others from it (any node would do).
    """

    MASTERS = 3

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self) -> RedisClusterServers:
        for i in range(self.MASTERS):
            folder = self.directory / f"node{i}"
            extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / "nodes.conf"),
            ]
            server = RedisServer(folder, extra=extra, choose_port=_free_cluster_port)
            self.servers.append(server.start())
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not on PATH; `.ci/run` installs it with redis-server")
        addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        done = subprocess.run(
            [*create, "--cluster-yes"], capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{done.stdout!r}\n{done.stderr!r}")
        from tests.conftest import wait_until  # here: conftest imports this module

        try:
            wait_until(
                lambda: all(self._state_ok(server.port) for server in self.servers),
                START_TIMEOUT_S * 3,
                "cluster_state:ok on every node",
            )
        except AssertionError:
            self.stop()
            pytest.fail("the redis cluster did not reach cluster_state:ok")
        return self

    @staticmethod
    def _state_ok(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"CLUSTER INFO\r\n")
                return b"cluster_state:ok" in sock.recv(4096)
        except OSError:
            return False

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __repr__(self) -> str:
        return f"<RedisClusterServers {[server.port for server in self.servers]}>"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """One 3-master Redis Cluster for the whole run (tests keep apart by key prefix)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of a single redis-server, then of a 3-master cluster: a suite taking it runs
    on both."""
    name = "redis_server" if request.param == "single" else "redis_cluster"
    server: RedisServer | RedisClusterServers = request.getfixturevalue(name)
    return server.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server for one test only: stop and restart it freely."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
