"""TLS between node and distributor, and the layering rules (pure modules do no I/O)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from jobreactor import Reactor, Registry
from jobreactor.config import ReactorConfig, client_ssl_context, server_ssl_context

PACKAGE = Path(__file__).resolve().parent.parent / "jobreactor"
PURE_MODULES = [
    *(f"protocol/{path.name}" for path in sorted((PACKAGE / "protocol").glob("*.py"))),
    "job.py",
    "definitions.py",
    "errors.py",
    "distributor/dispatch.py",
    "distributor/tracking.py",
    "node/scheduler.py",
]
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "redis", "uvloop", "time"}


def imported_top_level_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io(module: str) -> None:
    assert imported_top_level_modules(PACKAGE / module).isdisjoint(IO_MODULES)


def test_only_storage_and_the_tools_import_redis() -> None:
    # discovery/ is Redis by nature; distributors and nodes import it only with discovery_url.
    discovery = {"discovery/registry.py", "discovery/watch.py", "discovery/journals.py"}
    allowed = {
        "storage/redis.py",
        "storage/connect.py",
        "batch.py",
        "monitor.py",
        "cli.py",
    } | discovery
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative not in allowed:
            assert "redis" not in imported_top_level_modules(path), relative


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.timeout(30)
def test_jobs_flow_over_tls_and_a_plain_node_is_refused(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    server = server_ssl_context(ReactorConfig(tls_cert=cert, tls_key=key))
    client = client_ssl_context(ReactorConfig(tls_ca=cert))
    assert server is not None
    assert client is not None
    reactor = Reactor(logger_method="WARNING", handshake_timeout=0.5)
    reactor.run()
    try:
        host, port = reactor.start_distributor("127.0.0.1", 0, ssl=server)
        registry = Registry()
        registry.job("echo")(lambda args: None)
        reactor.start_node("tls", "memory", [(host, port)], registry=registry, ssl=client)
        assert reactor.enqueue("echo", {"x": 1}).result(10) == {"x": 1}  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            reactor.start_node("plain", "memory", [(host, port)], registry=registry)
        assert [n["name"] for n in reactor.nodes()] == ["tls"]
    finally:
        reactor.stop(timeout=10)
