"""Every shell command in the README, the docs site's pages and examples/web/README.md runs
as written, and every link of the README leads somewhere.

A command in the docs that exits 2 on a fresh machine is a bug a new user meets first. This
test reads the docs' `sh` blocks and runs each command line as it is written, in a project
directory laid out from the docs themselves: a code block whose first line is `# <path>`
(`# node.toml`, `# reactor_jobs/my_jobs.py`, `# myapp/feedbacks.py`) is that file. A block
naming a file that exists in this repository must equal it (docs and examples stay one).
The README is read first, then the pages of docs/ in the order of mkdocs.yml's nav, as a
reader follows them: one project, the files shown so far. (`mkdocs build --strict` in
.ci/run checks the site's own links and anchors; the README is not part of the site, so its
links are checked here.)

The one liberty taken: Redis. The docs say `redis://localhost:6379`; here that address is
rewritten to the test's own redis-server, and `JOBREACTOR_HIREDIS_URL` (the documented default
of `jobreactor jobs`) points there too. Long-running commands (node, distributor, dashboard,
gunicorn, uvicorn) must come up, show they serve, and stop with status 0 on SIGTERM; one-shot
commands must exit 0 (1, "no such job", where the docs use a placeholder id such as 5f0c9a…).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]


class _NavLoader(yaml.SafeLoader):
    """mkdocs.yml names Python objects (`!!python/name:...`): read them as nothing."""


_NavLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)


def _nav_pages(entries: Any) -> list[str]:
    """The pages of a mkdocs nav, in order (entries are paths, {title: path} or sections)."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in _nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in _nav_pages(value)]
    return []


def site_pages() -> list[Path]:
    """docs/ pages in the order of mkdocs.yml's nav."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_NavLoader)
    return [ROOT / config.get("docs_dir", "docs") / page for page in _nav_pages(config["nav"])]


# The README, then the site's pages, as a reader goes; the web recipe's README on its own.
READING = [ROOT / "README.md", *site_pages()]
DOCS = [*READING, ROOT / "examples" / "web" / "README.md"]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FILE_HEADER = re.compile(r"^# ([\w./-]+\.(?:py|toml))(?: \(.*\))?$", re.M)

# Commands the docs show that this test does not run, and why.
NOT_RUN = {
    "pip install": "installing is what .ci/run does first, the same way",
    "bash .ci/run": "this test is part of that very command",
    "python -m bench": "benchmarks take minutes; their figures are in docs/benchmarks.md",
}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    text: str


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    return [
        Block(doc, text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
        for m in BLOCK.finditer(text)
    ]


def file_of(block: Block) -> str | None:
    """The path a block shows the content of (its first line is `# <path>`), or None."""
    first = block.text.split("\n", 1)[0]
    header = FILE_HEADER.match(first)
    return header.group(1) if header and block.lang in {"python", "toml"} else None


def doc_files(doc: Path) -> dict[str, str]:
    """The files a doc shows (the last block wins where a doc shows one file twice)."""
    return {path: block.text for block in blocks(doc) if (path := file_of(block))}


def commands(block: Block) -> list[str]:
    """The block's command lines: continuations joined, comments and blank lines dropped."""
    joined = block.text.replace("\\\n", " ")
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def shell_commands(doc: Path) -> list[tuple[int, str]]:
    return [
        (block.line, command)
        for block in blocks(doc)
        if block.lang in {"sh", "bash", "shell"}
        for command in commands(block)
    ]


# --- running one command -----------------------------------------------------------------


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return check


def _ready_check(words: list[str], log: Path) -> Callable[[], bool] | None:
    """How a long-running command shows it serves; None for a one-shot command."""
    program = words[0]
    sub = words[1] if len(words) > 1 else ""
    if program == "jobreactor" and sub == "node":
        return lambda: " started (" in log.read_text()
    if program == "jobreactor" and sub == "distributor":
        return lambda: "storage, group" in log.read_text() or "no discovery" in log.read_text()
    if program == "jobreactor" and sub == "dashboard":
        port = int(words[words.index("--port") + 1]) if "--port" in words else 8181
        return lambda: _port_open(port)
    if program in {"gunicorn", "uvicorn"}:
        return _http_ok("http://127.0.0.1:8000/hello")
    return None


def _split_env(command: str) -> tuple[dict[str, str], list[str]]:
    """`A=1 B=2 prog args` -> ({A: 1, B: 2}, [prog, args])."""
    words = shlex.split(command, comments=True)
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


@contextlib.contextmanager
def running(
    command: str, cwd: Path, env: dict[str, str], log: Path, where: str
) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run `command` as written (through bash); yield the process of a long-running one once it
    serves (None for a one-shot command, which must have exited with its expected status)."""
    _, words = _split_env(command)
    ready = _ready_check(words, log)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec env {command}"], cwd=cwd, env=env, stdout=out, stderr=out
        )
    if ready is None:
        status = proc.wait(timeout=300)
        allowed = {0, 1} if "…" in command else {0}  # a placeholder id: "no such job"
        assert status in allowed, f"{where}: `{command}` exited {status}:\n{log.read_text()}"
        yield None
        return
    try:
        wait_until(
            lambda: ready() or proc.poll() is not None, timeout=120, what=f"`{command}` to serve"
        )
        assert proc.poll() is None, f"{where}: `{command}` exited:\n{log.read_text()}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    assert status == 0, f"{where}: `{command}` stopped with {status}:\n{log.read_text()}"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _child_env(redis: RedisServer, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBREACTOR_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout, as the editable install has it
    env["JOBREACTOR_HIREDIS_URL"] = _local_redis(redis, "redis://localhost:6379/0")
    env.update(more)
    return env


def _redis_address(redis: RedisServer) -> str:
    return redis.url.removeprefix("redis://").split("/")[0]


def _local_redis(redis: RedisServer, text: str) -> str:
    address = _redis_address(redis)
    return text.replace("localhost:6379", address).replace("127.0.0.1:6379", address)


# --- the tests ---------------------------------------------------------------------------


def test_doc_files_match_the_repository() -> None:
    for doc in DOCS:
        for path, text in doc_files(doc).items():
            on_disk = ROOT / path
            if on_disk.exists():
                assert on_disk.read_text() == text, f"{doc.name}: block {path} differs from {path}"


def test_every_doc_command_has_a_rule() -> None:
    for doc in DOCS:
        for line, command in shell_commands(doc):
            for part in command.split("&&"):
                part = part.strip()
                if any(part.startswith(prefix) for prefix in NOT_RUN) or part.startswith("export "):
                    continue
                _, words = _split_env(part)
                assert words[0] in {"jobreactor", "gunicorn", "uvicorn", "curl"}, (
                    f"{doc.name}:{line}: `{part}`: teach tests/test_readme_commands.py to run it"
                )


def test_every_site_page_is_in_the_nav() -> None:
    on_disk = {p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts}
    assert on_disk == set(site_pages()), "add the page to mkdocs.yml's nav (or delete it)"


# [text](target) in markdown outside code; a target that is not an URL.
LINK = re.compile(r"\[[^\]\n]*\]\((?![a-z][a-z0-9+.-]*:)([^)\s]+)\)")


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = BLOCK.sub("", doc.read_text())
    return {_github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_lead_somewhere() -> None:
    """Relative links of the README (into docs/, to examples) name files that exist, and
    anchors that their page has: they must work on GitHub, where the README is read."""
    readme = ROOT / "README.md"
    links = LINK.findall(BLOCK.sub("", readme.read_text()))
    assert len(links) >= 20
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path) if path else readme
        assert target.exists(), f"README.md links to {link}: no such file"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"README.md links to {link}: no such heading"


def test_readme_commands_run_as_written(tmp_path: Path, redis_server: RedisServer) -> None:
    """The README, then the site's pages, top to bottom as a reader follows them: each file
    block (re)writes its file in the project, each command runs with the files shown so far."""
    project = tmp_path / "project"
    project.mkdir()
    env = _child_env(redis_server)
    ran = 0
    for block in (block for doc in READING for block in blocks(doc)):
        path = file_of(block)
        if path is not None:
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(_local_redis(redis_server, block.text))
            continue
        if block.lang not in {"sh", "bash", "shell"}:
            continue
        for command in commands(block):
            for part in (p.strip() for p in command.split("&&")):
                if any(part.startswith(prefix) for prefix in NOT_RUN):
                    continue
                log = tmp_path / f"command-{ran}.log"
                where = f"{block.doc.relative_to(ROOT)}:{block.line}"
                with running(_local_redis(redis_server, part), project, env, log, where):
                    ran += 1
    assert ran >= 10


def test_web_example_commands_run_as_written(tmp_path: Path, redis_server: RedisServer) -> None:
    """examples/web/README.md: each server as written, the node as written, one request each,
    and its named feedback back in the web worker (the whole loop of the recipe)."""
    doc = ROOT / "examples" / "web" / "README.md"
    out = tmp_path / "out"
    out.mkdir()
    env = _child_env(redis_server, WEB_EXAMPLE_OUT=str(out))
    servers, nodes, requests = [], [], []
    for line, command in shell_commands(doc):
        command = _local_redis(redis_server, command)
        if command.startswith("export "):
            for word in shlex.split(command)[1:]:
                key, _, value = word.partition("=")
                env[key] = value
        elif command.startswith("jobreactor node"):
            nodes.append((line, command))
        elif command.startswith("curl"):
            requests.append(command)
        else:
            servers.append((line, command))
    assert servers
    assert nodes
    assert requests
    cwd = ROOT / "examples" / "web"
    with contextlib.ExitStack() as stack:
        for i, (line, command) in enumerate(nodes):
            log = tmp_path / f"node-{i}.log"
            stack.enter_context(running(command, cwd, env, log, f"examples/web/README.md:{line}"))
        for i, (line, command) in enumerate(servers):
            log = tmp_path / f"server-{i}.log"
            with running(command, cwd, env, log, f"examples/web/README.md:{line}"):
                for request in requests:
                    answer = subprocess.run(
                        ["bash", "-c", request], capture_output=True, text=True, timeout=60
                    )
                    assert answer.returncode == 0, answer.stderr
                    assert '"id"' in answer.stdout
                expected = (i + 1) * len(requests)
                wait_until(
                    lambda expected=expected: _lines(out / "feedback.jsonl") >= expected,  # type: ignore[misc]
                    timeout=60,
                    what=f"the feedback of `{command}`'s request",
                )


def _help(*words: str) -> str:
    """`jobreactor <words> --help`, run in this process (`main` is the console script)."""
    from jobreactor.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*words, "--help"])
    return out.getvalue()


def _choices(help_text: str) -> list[str]:
    """The subcommands a `--help` lists (`{a,b,c}`)."""
    found = re.search(r"\{([\w,-]+)\}", help_text)
    return found.group(1).split(",") if found else []


def test_the_cli_reference_has_every_command_and_option() -> None:
    """docs/reference/cli.md (written from `--help`) names every subcommand and every option
    each one takes: a new command or flag needs its line there."""
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    commands = [[name] for name in _choices(_help())]
    commands += [["jobs", name] for name in _choices(_help("jobs"))]
    assert len(commands) >= 15
    for words in commands:
        title = f"`jobreactor {' '.join(words)}`"
        assert f"# {title}" in page, f"docs/reference/cli.md: no heading {title}"
        section = page.split(f"# {title}", 1)[1].split("\n## ", 1)[0]
        for option in set(re.findall(r"(?<![\w-])--[a-z][\w-]*", _help(*words))):
            assert option in section, f"docs/reference/cli.md: {title} lacks {option}"


def test_the_keys_page_names_every_key_the_code_spells() -> None:
    """docs/storage/keys.md lists each key and channel as the code spells it (`storage/keys.py`,
    `storage/status_index.py`, `discovery/keys.py`), placeholders in angle brackets."""
    from jobreactor.discovery.keys import GroupKeys
    from jobreactor.storage import status_index
    from jobreactor.storage.keys import Keys, LegacyKeys, batch_keys

    page = (ROOT / "docs" / "storage" / "keys.md").read_text()
    keys, group, legacy = Keys("<p>"), GroupKeys("<p>", "<group>"), LegacyKeys("jr")
    tagged_batch = batch_keys(None, "<token>", cluster=True)[1:]  # on a cluster
    spelled = [
        keys.job("<node>", "<id>"),
        keys.index("<node>"),
        keys.claim("<node>", "<token>:<start>"),
        keys.commands("<node>"),
        keys.nodes,
        *keys.queue("<queue>"),
        keys.withdrawn("<queue>"),
        keys.uniq("enqueue:<enqueue_id>"),
        keys.uniq("loner:<lock key>"),
        keys.uniq("perform:<perform_id>"),
        keys.lock("<lock key>"),
        *keys.limit("<job>:<kind>:<key>"),
        *(status_index.index_key(keys.node_tag("<node>"), kind) for kind in status_index.KINDS),
        *batch_keys(None, "<token>", cluster=False)[1:],
        *(key.replace("{", "{[<namespace>:]") for key in tagged_batch),
        group.members("distributor"),
        group.members("node"),
        group.member("<instance id>"),
        group.events,
        group.journals,
        group.journal("<journal>"),
        legacy.job("<node>", "<id>"),
        legacy.index("<node>"),
        legacy.nodes,
        legacy.queue("distributor:<host:port>")[0],
        legacy.uniq_stem(),
        legacy.lock_stem(),
    ]
    for key in spelled:
        assert key in page, f"docs/storage/keys.md does not list {key}"
