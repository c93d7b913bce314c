"""Discovery keys in config files and the environment; `jobreactor distributor` with discovery."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobreactor import ConfigError, Reactor
from jobreactor.config import load_distributor_config, load_node_config
from jobreactor.discovery import Member, live_members
from jobreactor.discovery.registry import connect
from tests.conftest import wait_until
from tests.discovery.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def test_a_node_may_have_discovery_instead_of_distributors(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('name = "n"\ndiscovery_url = "redis://r:6379/0"\ngroup = "shop"\n')
    config = load_node_config(path, environ={})
    assert config.distributors == ()
    assert config.settings.discovery_url == "redis://r:6379/0"
    assert config.settings.group == "shop"


def test_discovery_comes_from_the_environment_too() -> None:
    environ = {"JOBREACTOR_DISCOVERY_URL": "redis://e:1/0", "JOBREACTOR_GROUP": "12345"}
    config = load_node_config(None, environ=environ, name="n")
    assert config.settings.discovery_url == "redis://e:1/0"
    assert config.settings.group == "12345"  # a string, not a number
    assert load_distributor_config(None, environ=environ).settings.group == "12345"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"name": "n"}, "distributors = \\[\\]: expected at least one entry.*discovery_url"),
        ({"name": "n", "discovery_url": "redis://x", "group": "a{b}"}, "group"),
        ({"name": "n", "discovery_url": "redis://x", "registry_ttl": 5.0}, "registry_ttl"),
        ({"name": "n", "discovery_url": "redis://x", "adopt_grace": 10.0}, "adopt_grace"),
    ],
)
def test_bad_discovery_settings_are_config_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_node_config(None, environ={}, **settings)


def test_reactor_config_checks_registry_times() -> None:
    with pytest.raises(ConfigError, match="registry_ttl"):
        Reactor(registry_beat=2.0, registry_ttl=1.0)


def _members(url: str, prefix: str, group: str) -> list[Member]:
    async def read() -> list[Member]:
        client = connect(url)
        try:
            return await live_members(client, group, prefix=prefix)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_cli_distributor_registers_imports_and_leaves_on_sigterm(
    group: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "feedbacks.py").write_text(
        "from pathlib import Path\nfrom jobreactor import JR\n"
        "JR.register_feedback('fed', print)\nPath('imported').write_text('yes')\n"
    )
    command = [sys.executable, "-m", "jobreactor", "distributor", "--port", "0"]
    command += ["--discovery-url", group["discovery_url"], "--group", "shop"]
    command += ["--import", "feedbacks", "--advertise", "10.9.8.7:6543"]
    env = {"JOBREACTOR_REDIS_PREFIX": group["redis_prefix"], "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        command, cwd=tmp_path, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
    )
    try:
        url, prefix = group["discovery_url"], group["redis_prefix"]
        wait_until(lambda: bool(_members(url, prefix, "shop")), 20, "registration")
        (member,) = _members(url, prefix, "shop")
        assert member.address == "10.9.8.7:6543"
        assert (tmp_path / "imported").read_text() == "yes"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert _members(url, prefix, "shop") == []


def test_cli_distributor_on_a_port_in_use_exits_2_and_says_port_0() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = [sys.executable, "-m", "jobreactor", "distributor", "--port", str(port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "port 0" in done.stderr
