"""Mistakes that used to be silent are said once, with what to do (issue: operating the web tier).

Each case runs the real thing: real sockets on port 0, a real redis-server, real node processes
where the mistake is in a process's environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from jobreactor import Reactor, Registry
from jobreactor.config import load_distributor_config, load_node_config
from jobreactor.discovery import live_members
from jobreactor.environment import warn_unknown_variables
from jobreactor.errors import ConfigError
from jobreactor.monitor import RedisMonitor
from tests.conftest import make_test_reactor, wait_until
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(90)

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def _env(**more: str) -> dict[str, str]:
    """A child's environment: jobreactor importable, no JOBREACTOR_* of ours leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBREACTOR_")}
    env["PYTHONPATH"] = PACKAGE_ROOT  # jobreactor itself; never the user's project
    env.update(more)
    return env


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and needle in r.getMessage()
    ]


# --- unknown JOBREACTOR_* variables ------------------------------------------------------------


def test_unknown_variable_is_named_once_with_a_did_you_mean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"JOBREACTOR_DISCOVERY_ULR": "redis://x", "JOBREACTOR_GROUP": "shop"}
    with caplog.at_level(logging.WARNING, logger="jobreactor"):
        assert warn_unknown_variables(environ) == ["JOBREACTOR_DISCOVERY_ULR"]
        assert warn_unknown_variables(environ) == []  # once per process
    (line,) = _warnings(caplog, "JOBREACTOR_DISCOVERY_ULR")
    assert "did you mean JOBREACTOR_DISCOVERY_URL?" in line


def test_cli_node_warns_about_a_misspelt_variable(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('name = "w1"\ndistributors = ["127.0.0.1:1"]\n')
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "j.py").write_text("from jobreactor import job\n\n@job('j')\ndef j(args): pass\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobreactor",
            "node",
            "-c",
            str(config),
            "--job-directory",
            str(jobs),
        ],
        env=_env(JOBREACTOR_DISCOVERY_ULR="redis://127.0.0.1:1", JOBREACTOR_GORUP="shop"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "started" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    text = "".join(seen) + rest
    assert text.count("JOBREACTOR_DISCOVERY_ULR is not a jobreactor setting") == 1
    assert "did you mean JOBREACTOR_DISCOVERY_URL?" in text
    assert "did you mean JOBREACTOR_GROUP?" in text


# --- storage "redis" needs a URL; redis_host/redis_port are honoured ---------------------------


def test_redis_storage_without_a_url_is_an_error_not_localhost(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('name = "w1"\nstorage = "redis"\ndistributors = ["127.0.0.1:5000"]\n')
    with pytest.raises(ConfigError, match="needs a Redis URL"):
        load_node_config(config, environ={})
    with pytest.raises(ConfigError, match="needs a Redis URL"):
        load_distributor_config(None, environ={"JOBREACTOR_STORAGE": "redis"})
    out = subprocess.run(
        [sys.executable, "-m", "jobreactor", "node", "-c", str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "needs a Redis URL" in out.stderr
    assert "Traceback" not in out.stderr


def test_redis_storage_url_may_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('name = "w1"\nstorage = "redis"\ndistributors = ["127.0.0.1:5000"]\n')
    node = load_node_config(config, environ={"JOBREACTOR_REDIS_URL": "redis://h:1/0"})
    assert node.redis_url == "redis://h:1/0"
    reactor = make_test_reactor()
    try:
        with pytest.raises(ConfigError, match="needs a Redis URL"):
            reactor.start_distributor("127.0.0.1", 0, storage="redis")
        with pytest.raises(ConfigError, match="needs a Redis URL"):
            reactor.ensure_started(storage="redis")
    finally:
        reactor.stop(timeout=5)


def test_explicit_hiredis_url_setting_still_serves(redis_server: RedisServer) -> None:
    reactor = make_test_reactor(hiredis_url=redis_server.url, redis_prefix=unique_prefix())
    try:
        reactor.start_distributor("127.0.0.1", 0, storage="redis")
        assert reactor.distributor.storage.durable
    finally:
        reactor.stop(timeout=5)


def test_redis_monitor_honours_redis_host_and_port(redis_server: RedisServer) -> None:
    from jobreactor import JR

    host, port = redis_server.url.removeprefix("redis://").split("/")[0].split(":")
    saved = JR.config.current
    JR.config.update(redis_host=host, redis_port=int(port))
    try:
        with RedisMonitor(prefix=unique_prefix()) as monitor:
            assert repr(monitor).startswith(f"<RedisMonitor redis://{host}:{port}")
            assert monitor.nodes() == []  # a real round trip to that server
    finally:
        JR.config.restore(saved)


# --- ensure_started reads the environment as the hooks do ---------------------------------------


def test_ensure_started_registers_in_the_environments_group(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix()
    monkeypatch.setenv("JOBREACTOR_DISCOVERY_URL", redis_server.url)
    monkeypatch.setenv("JOBREACTOR_GROUP", "shop")
    monkeypatch.setenv("JOBREACTOR_REDIS_PREFIX", prefix)
    reactor = Reactor(logger_method="WARNING", shutdown_timeout=2.0)
    try:
        reactor.ensure_started()
        reactor.ensure_started()  # idempotent
        port = reactor.distributor.address_port()

        async def read() -> list[Any]:
            client = aredis.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                return await live_members(client, "shop", prefix=prefix, kind="distributor")
            finally:
                await client.aclose()

        (member,) = asyncio.run(read())
        assert member.address == f"127.0.0.1:{port}"
        assert reactor.distributor.group == "shop"
    finally:
        reactor.stop(timeout=5)


# --- a node alone, a distributor nobody can find ---------------------------------------------


def test_node_in_a_group_with_no_distributor_says_so_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    reactor = make_test_reactor(warn_no_node_after=0.3, redis_prefix=unique_prefix())
    registry = Registry()
    registry.job("j")(lambda args: None)
    try:
        with caplog.at_level(logging.WARNING, logger="jobreactor"):
            reactor.start_node(
                "lonely",
                "memory",
                None,
                registry=registry,
                discovery_url=redis_server.url,
                group="shpo",
                wait=False,
            )
            wait_until(lambda: bool(_warnings(caplog, "no distributor")), timeout=20)
    finally:
        reactor.stop(timeout=5)
    (line,) = _warnings(caplog, "no distributor")
    assert "group 'shpo'" in line
    assert "JOBREACTOR_GROUP" in line


def test_node_with_a_working_distributor_stays_quiet(caplog: pytest.LogCaptureFixture) -> None:
    reactor = make_test_reactor(warn_no_node_after=0.2)
    registry = Registry()
    registry.job("j")(lambda args: None)
    try:
        with caplog.at_level(logging.WARNING, logger="jobreactor"):
            _, port = reactor.start_distributor("127.0.0.1", 0)
            reactor.start_node("w1", "memory", [("127.0.0.1", port)], registry=registry)
            handle = reactor.enqueue("j", {})
            assert handle is not None
            handle.result(20)
            # past the deadline of both checks (0.2 s), on the loop's own clock
            assert reactor.call(lambda: asyncio.sleep(0.5, True), timeout=10)
    finally:
        reactor.stop(timeout=5)
    assert _warnings(caplog, "no distributor") == []
    assert _warnings(caplog, "port picked at random") == []


def test_port_zero_without_discovery_that_no_node_finds_is_loud(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reactor = make_test_reactor(warn_no_node_after=0.3)
    try:
        with caplog.at_level(logging.WARNING, logger="jobreactor"):
            reactor.start_distributor("127.0.0.1", 0)
            wait_until(lambda: bool(_warnings(caplog, "port picked at random")), timeout=20)
    finally:
        reactor.stop(timeout=5)
    (line,) = _warnings(caplog, "port picked at random")
    assert "JOBREACTOR_DISCOVERY_URL" in line


# --- logging that fits a web worker ----------------------------------------------------------

HOST_APP = """
import logging, sys
{configure}
from jobreactor import Reactor
r = Reactor(shutdown_timeout=1.0)
r.ensure_started()
logging.getLogger("jobreactor.app").warning("hello from the worker")
r.stop(timeout=5)
"""


@pytest.mark.parametrize("configured", [False, True])
def test_jobreactor_lines_carry_time_pid_and_level_in_a_bare_worker(configured: bool) -> None:
    configure = "logging.basicConfig(format='APP %(message)s')" if configured else ""
    out = subprocess.run(
        [sys.executable, "-c", HOST_APP.format(configure=configure)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "hello from the worker" in line]
    assert len(lines) == 1  # never twice
    if configured:
        assert lines[0] == "APP hello from the worker"  # the app's own logging is kept
    else:
        pattern = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[\d+\] WARNING jobreactor\.app: "
        assert re.match(pattern, lines[0]), lines[0]


# --- nodes import the app ----------------------------------------------------------------------


def _project(root: Path) -> None:
    (root / "myapp" / "jobs").mkdir(parents=True)
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "mailer.py").write_text(
        "def send(path, text):\n    open(path, 'w').write(text)\n"
    )
    (root / "myapp" / "jobs" / "mail_jobs.py").write_text(
        textwrap.dedent(
            """
            from jobreactor import job
            from myapp.mailer import send


            @job("mail")
            def mail(args):
                send(args["out"], "sent")
            """
        )
    )


def test_node_check_imports_the_app_from_the_working_directory(tmp_path: Path) -> None:
    _project(tmp_path)
    out = subprocess.run(
        [
            sys.executable, "-m", "jobreactor", "node", "--name", "w1",
            "--distributor", "127.0.0.1:5000", "--job-directory", "myapp/jobs", "--check",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   jobs: 1" in out.stdout


def test_node_runs_app_jobs_with_app_dir_from_elsewhere(tmp_path: Path, reactor: Reactor) -> None:
    project = tmp_path / "project"
    _project(project)
    port = reactor.distributor.address_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'name = "appnode"\ndistributors = ["127.0.0.1:{port}"]\n'
        f'app_dir = "project"\njob_directory = "project/myapp/jobs"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobreactor", "node", "-c", str(config)],
        cwd="/",
        env=_env(JOBREACTOR_LOGGER_METHOD="WARNING"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reactor.wait_for_node("appnode", timeout=30)
        out = tmp_path / "sent.txt"
        handle = reactor.enqueue("mail", {"out": str(out)})
        assert handle is not None
        handle.result(30)
        assert out.read_text() == "sent"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


DJANGO_SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}}
USE_TZ = True
GREETING = "from settings"
"""

DJANGO_JOB = """
from django.conf import settings
from django.contrib.auth.models import User

from jobreactor import job


@job("make_user")
def make_user(args):
    User.objects.create(username=args["username"], first_name=settings.GREETING)
    args["users"] = User.objects.count()
"""


def test_django_recipe_for_nodes_uses_settings_and_the_orm(
    tmp_path: Path, reactor: Reactor
) -> None:
    db = tmp_path / "db.sqlite3"
    (tmp_path / "mysite").mkdir()
    (tmp_path / "mysite" / "__init__.py").write_text("")
    (tmp_path / "mysite" / "settings.py").write_text(DJANGO_SETTINGS.format(db=str(db)))
    (tmp_path / "mysite" / "jobs").mkdir()
    (tmp_path / "mysite" / "jobs" / "user_jobs.py").write_text(DJANGO_JOB)
    env = _env(DJANGO_SETTINGS_MODULE="mysite.settings", JOBREACTOR_LOGGER_METHOD="WARNING")
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": f"{PACKAGE_ROOT}:{tmp_path}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    port = reactor.distributor.address_port()
    (tmp_path / "node.toml").write_text(
        f'name = "djnode"\ndistributors = ["127.0.0.1:{port}"]\n'
        'job_directory = "mysite/jobs"\nimports = ["jobreactor.contrib.django"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobreactor", "node", "-c", "node.toml"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reactor.wait_for_node("djnode", timeout=60)
        handle = reactor.enqueue("make_user", {"username": "ada"}, {"defer": True})
        assert handle is not None
        assert handle.result(30)["users"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    import sqlite3

    rows = sqlite3.connect(db).execute("select username, first_name from auth_user").fetchall()
    assert rows == [("ada", "from settings")]
