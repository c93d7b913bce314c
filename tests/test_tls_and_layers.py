"""TLS between node and distributor, and the layering rules (pure modules do no I/O)."""

from __future__ import annotations

import ast
import re
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
    "distributor/session_state.py",
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


def source_lines(pattern: str) -> list[tuple[str, str]]:
    """(file:line, text) of every line of the package's Python files that matches `pattern`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                found.append((f"{path.relative_to(PACKAGE).as_posix()}:{number}", line.strip()))
    return found


def test_comments_point_only_at_documents_the_repository_ships() -> None:
    """The project's notes (SPEC.md, DESIGN.md, STYLE.md, research) are not in the repository:
    code never cites them."""
    assert source_lines(r"\b(SPEC|DESIGN|STYLE)\b|\bpractice \d|\bresearch §") == []


def test_cited_sections_exist() -> None:
    """Every `docs/semantics.md §N`, `docs/decisions.md "Title"` and `README "Title"` the code
    cites is there."""
    root = PACKAGE.parent
    sections = set(re.findall(r"^## (\d+)\.", (root / "docs/semantics.md").read_text(), re.M))
    for where, line in source_lines(r"docs/semantics\.md"):
        for number in re.findall(r"§(\d+)", line.split("docs/semantics.md", 1)[1]):
            assert number in sections, f"{where}: no section {number} in docs/semantics.md"
    # The README's sections beyond the newcomer's part moved to the docs site's pages.
    readme = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    for document in ("docs/decisions.md", "README"):
        paths = readme if document == "README" else [root / document]
        text = "\n".join(path.read_text() for path in paths)
        headings = re.findall(r"^#+ (.+)$", text, re.M)
        for where, line in source_lines(f'{re.escape(document)} "'):
            title = line.split(f'{document} "', 1)[1].split('"', 1)[0]
            assert any(h.startswith(title) for h in headings), f"{where}: no {title!r} there"


def test_only_storage_and_the_tools_import_redis() -> None:
    # discovery/ is Redis by nature; distributors and nodes import it only with discovery_url.
    discovery = {"discovery/registry.py", "discovery/watch.py", "discovery/journals.py"}
    discovery |= {"distributor/releases.py"}  # presence.py's listener: with discovery_url only
    allowed = {
        "storage/redis.py",
        "storage/connect.py",
        "storage/queue_sync.py",
        "storage/wakeups.py",
        "storage/redis_limits.py",
        "batch.py",
        "batch_stores.py",
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
