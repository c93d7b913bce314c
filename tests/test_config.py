"""Configuration: SPEC 1.12 defaults, validated updates, node.toml and JOBREACTOR_* overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest

from jobreactor.config import (
    Config,
    DistributorAddress,
    NodeConfig,
    ReactorConfig,
    load_distributor_config,
    load_node_config,
    load_toml,
)
from jobreactor.errors import ConfigError, JobReactorError
from jobreactor.protocol import DEFAULT_MAX_FRAME_BYTES

# SPEC 1.12, "same names and defaults".
SPEC_DEFAULTS = {
    "job_directory": "reactor_jobs",
    "max_attempt": 10,
    "retry_multiplier": 5,
    "retry_jobs_at_start": True,
    "merge_job_itself_to_args": False,
    "log_job_processing": True,
    "always_use_specified_node": False,
    "remove_done_jobs": True,
    "remove_cancelled_jobs": True,
    "remove_failed_jobs": False,
    "hiredis_url": "redis://localhost:6379",
    "redis_host": "localhost",
    "redis_port": 6379,
}

# SPEC 1.12 "PY extra keys (recommended)".
EXTRA_DEFAULTS = {
    "max_frame_bytes": DEFAULT_MAX_FRAME_BYTES,
    "thread_pool_size": 20,
    "reconnect_interval": 1.0,
    "retry_strategy": "linear",
    "default_priority": 0,
    "max_run_time": None,
}


# --- Config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), {**SPEC_DEFAULTS, **EXTRA_DEFAULTS}.items())
def test_config_defaults_equal_the_spec(key: str, value: Any) -> None:
    config = Config()
    assert config[key] == value
    if isinstance(value, bool):
        assert config[key] is value


def test_config_lists_every_key() -> None:
    keys = set(Config())
    assert set(SPEC_DEFAULTS) <= keys
    assert set(EXTRA_DEFAULTS) <= keys
    assert "logger_method" in keys
    assert {"node_grace", "shutdown_timeout", "secret"} <= keys  # DESIGN "Config extras"


def test_update_with_keywords_and_with_a_mapping() -> None:
    config = Config()
    config.update(max_attempt=5)
    assert config["max_attempt"] == 5
    config.update({"retry_multiplier": 0, "remove_failed_jobs": True})
    assert config["retry_multiplier"] == 0
    assert config["remove_failed_jobs"] is True
    config.update({"max_attempt": 3}, max_attempt=4)  # keywords win, as in dict.update
    assert config["max_attempt"] == 4
    assert config["job_directory"] == "reactor_jobs"  # untouched keys keep their values


def test_item_assignment_is_validated_too() -> None:
    config = Config()
    config["always_use_specified_node"] = True
    assert config["always_use_specified_node"] is True
    with pytest.raises(ConfigError, match="max_attempt"):
        config["max_attempt"] = 0


def test_constructor_takes_and_validates_values() -> None:
    assert Config(max_attempt=2)["max_attempt"] == 2
    with pytest.raises(ConfigError, match="max_atempt"):
        Config(max_atempt=2)


def test_update_rejects_unknown_keys_with_config_error() -> None:
    config = Config()
    with pytest.raises(ConfigError, match="max_atempt") as info:
        config.update(max_atempt=5)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, JobReactorError)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_attempt", 0),
        ("max_attempt", "many"),
        ("retry_multiplier", -1),
        ("retry_strategy", "fibonacci"),
        ("thread_pool_size", 0),
        ("reconnect_interval", 0),
        ("max_frame_bytes", 10),
        ("max_run_time", 0),
        ("redis_port", "six"),
        ("logger_method", "LOUD"),
        ("remove_done_jobs", "perhaps"),
    ],
)
def test_update_rejects_bad_values_naming_the_key(key: str, value: Any) -> None:
    config = Config()
    with pytest.raises(ConfigError, match=key):
        config.update({key: value})


def test_a_failed_update_changes_nothing() -> None:
    config = Config()
    config.update(max_attempt=3)
    with pytest.raises(ConfigError):
        config.update(max_attempt=7, retry_multiplier=-1)
    assert config["max_attempt"] == 3
    assert config["retry_multiplier"] == 5


def test_item_access_of_an_unknown_key_is_a_key_error() -> None:
    config = Config()
    with pytest.raises(KeyError):
        config["nope"]
    assert config.get("nope") is None
    assert config.get("nope", 1) == 1
    assert config.get("max_attempt") == 10


def test_logger_method_takes_a_level_name_or_none() -> None:
    config = Config()
    config.update(logger_method="debug")
    assert config["logger_method"] == "debug"
    config.update(logger_method=None)
    assert config["logger_method"] is None


def test_snapshot_is_frozen_and_overrides_do_not_leak_back() -> None:
    config = Config()
    snapshot = config.snapshot()
    assert isinstance(snapshot, ReactorConfig)
    with pytest.raises(pydantic.ValidationError):
        snapshot.max_attempt = 3
    tuned = config.snapshot(max_attempt=2)
    assert tuned.max_attempt == 2
    assert config["max_attempt"] == 10
    with pytest.raises(ConfigError, match="bogus"):
        config.snapshot(bogus=1)


def test_snapshot_does_not_follow_later_updates() -> None:
    config = Config()
    snapshot = config.snapshot()
    config.update(max_attempt=2)
    assert snapshot.max_attempt == 10
    assert config.snapshot().max_attempt == 2


# --- node.toml ----------------------------------------------------------------------------------


def toml(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_node_config_with_host_port_pairs(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
        name = "w1"
        distributors = [["127.0.0.1", 5000], ["10.0.0.2", 5001]]
        """,
    )
    node = load_node_config(path, environ={})
    assert node.name == "w1"
    assert node.storage == "memory"
    assert node.distributors == (
        DistributorAddress(host="127.0.0.1", port=5000),
        DistributorAddress(host="10.0.0.2", port=5001),
    )
    assert node.settings == ReactorConfig()


def test_node_config_with_host_colon_port_strings(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
        name = "w1"
        distributors = ["127.0.0.1:5000", "dist.example:6000"]
        """,
    )
    node = load_node_config(path, environ={})
    assert [(d.host, d.port) for d in node.distributors] == [
        ("127.0.0.1", 5000),
        ("dist.example", 6000),
    ]


def test_node_config_with_address_tables(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
        name = "w1"
        [[distributors]]
        host = "127.0.0.1"
        port = 5000
        """,
    )
    node = load_node_config(path, environ={})
    assert node.distributors == (DistributorAddress(host="127.0.0.1", port=5000),)


def test_node_keys_and_config_keys_in_one_file(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
        name = "w1"
        storage = "redis"
        redis_url = "redis://127.0.0.1:6390/0"
        distributors = [["127.0.0.1", 5000]]
        job_directory = "my_jobs"
        concurrency = 8
        secret = "s3cret"
        max_attempt = 3
        retry_multiplier = 0
        remove_failed_jobs = true
        """,
    )
    node = load_node_config(path, environ={})
    assert node.storage == "redis"
    assert node.redis_url == "redis://127.0.0.1:6390/0"
    assert node.job_directory == str(path.parent / "my_jobs")  # relative to the file
    assert node.concurrency == 8
    assert node.secret == "s3cret"
    settings = node.settings
    assert settings.max_attempt == 3
    assert settings.retry_multiplier == 0
    assert settings.remove_failed_jobs is True
    # Node-level keys that are also settings reach the settings.
    assert settings.job_directory == str(path.parent / "my_jobs")
    assert settings.concurrency == 8
    assert settings.secret == "s3cret"
    assert settings.remove_done_jobs is True  # untouched keys keep SPEC defaults


MINIMAL_NODE = """
name = "w1"
distributors = [["127.0.0.1", 5000]]
"""
BASE_NODE = MINIMAL_NODE + "max_attempt = 3\n"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, BASE_NODE)
    environ = {
        "JOBREACTOR_NAME": "w2",
        "JOBREACTOR_MAX_ATTEMPT": "7",
        "JOBREACTOR_REMOVE_FAILED_JOBS": "true",
        "JOBREACTOR_DISTRIBUTORS": '["10.0.0.9:7000"]',
        "JOBREACTOR_STORAGE": "redis",
        "JOBREACTOR_REDIS_URL": "redis://10.0.0.9:6379/0",
        "JOBREACTOR_RETRY_MULTIPLIER": "0.5",
        "JOBREACTOR_JOB_DIRECTORY": "/srv/jobs",
        "UNRELATED": "ignored",
        "JOBREACTOR_": "ignored",
    }
    node = load_node_config(path, environ=environ)
    assert node.name == "w2"
    assert node.storage == "redis"
    assert [(d.host, d.port) for d in node.distributors] == [("10.0.0.9", 7000)]
    assert node.job_directory == "/srv/jobs"
    assert node.settings.max_attempt == 7
    assert node.settings.retry_multiplier == 0.5
    assert node.settings.remove_failed_jobs is True
    assert node.settings.job_directory == "/srv/jobs"


def test_environ_parameter_replaces_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml(tmp_path, BASE_NODE)
    monkeypatch.setenv("JOBREACTOR_MAX_ATTEMPT", "9")
    assert load_node_config(path, environ={}).settings.max_attempt == 3
    assert load_node_config(path).settings.max_attempt == 9  # default: os.environ


@pytest.mark.parametrize("value", ["123456", "true", "1.5"])
def test_string_keys_from_the_environment_stay_strings(tmp_path: Path, value: str) -> None:
    # A secret or a node name that looks like JSON is still that text.
    path = toml(tmp_path, BASE_NODE)
    environ = {"JOBREACTOR_SECRET": value, "JOBREACTOR_NAME": value}
    node = load_node_config(path, environ=environ)
    assert node.secret == value
    assert node.settings.secret == value
    assert node.name == value


def test_keyword_overrides_beat_file_and_environment(tmp_path: Path) -> None:
    # Explicit arguments (the CLI's flags) win over JOBREACTOR_* and over the file.
    path = toml(tmp_path, BASE_NODE)
    node = load_node_config(path, environ={}, name="from-kw", max_attempt=4)
    assert node.name == "from-kw"
    assert node.settings.max_attempt == 4
    environ = {"JOBREACTOR_NAME": "from-env", "JOBREACTOR_MAX_ATTEMPT": "8"}
    node = load_node_config(path, environ=environ, name="from-kw", max_attempt=4)
    assert node.name == "from-kw"
    assert node.settings.max_attempt == 4


def test_keyword_overrides_of_none_are_ignored(tmp_path: Path) -> None:
    path = toml(tmp_path, BASE_NODE)
    node = load_node_config(path, environ={}, name=None, concurrency=None)
    assert node.name == "w1"
    assert node.concurrency is None


def test_node_config_without_a_file(tmp_path: Path) -> None:
    node = load_node_config(
        None, environ={}, name="w1", distributors=[("127.0.0.1", 5000)], max_attempt=2
    )
    assert isinstance(node, NodeConfig)
    assert node.distributors[0].port == 5000
    assert node.settings.max_attempt == 2


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, 'name = "w1\ndistributors = [[\n', name="broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml") as info:
        load_node_config(path, environ={})
    assert "TOML" in str(info.value)


def test_a_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_node_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_toml(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_attempt = 0", "max_attempt"),
        ('max_attempt = "ten"', "max_attempt"),
        ("retry_multiplier = -5", "retry_multiplier"),
        ('retry_strategy = "random"', "retry_strategy"),
        ('storage = "disk"', "storage"),
        ("concurrency = 0", "concurrency"),
        ('remove_done_jobs = "maybe"', "remove_done_jobs"),
        ('logger_method = "LOUD"', "logger_method"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_file_and_key(
    tmp_path: Path, line: str, key: str
) -> None:
    path = toml(tmp_path, MINIMAL_NODE + line + "\n", name="bad_value.toml")
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    message = str(info.value)
    assert "bad_value.toml" in message
    assert key in message


@pytest.mark.parametrize(
    "distributors",
    [
        '[["127.0.0.1", 70000]]',
        '["127.0.0.1:port"]',
        '["no-port"]',
        "[]",
        '"127.0.0.1:5000"',
    ],
)
def test_bad_distributors_name_the_key(tmp_path: Path, distributors: str) -> None:
    path = toml(tmp_path, f'name = "w1"\ndistributors = {distributors}\n', name="d.toml")
    with pytest.raises(ConfigError, match="distributors") as info:
        load_node_config(path, environ={})
    assert "d.toml" in str(info.value)


def test_an_unknown_key_is_a_config_error_naming_file_and_key(tmp_path: Path) -> None:
    path = toml(tmp_path, BASE_NODE + "max_atempt = 4\n", name="typo.toml")
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    message = str(info.value)
    assert "typo.toml" in message
    assert "max_atempt" in message


def test_the_ruby_server_key_is_unknown(tmp_path: Path) -> None:
    # SPEC "Where DESIGN.md overrides": the node config has no `server` key any more.
    path = toml(tmp_path, BASE_NODE + 'server = ["127.0.0.1", 6000]\n')
    with pytest.raises(ConfigError, match="server"):
        load_node_config(path, environ={})


def test_a_settings_table_is_not_silently_ignored(tmp_path: Path) -> None:
    # The module promises "a typo is an error, not a silently ignored key": a [settings]
    # table must either be applied or refused, never dropped.
    path = toml(tmp_path, MINIMAL_NODE + "[settings]\nmax_attempt = 4\n")
    try:
        node = load_node_config(path, environ={})
    except ConfigError:
        return
    assert node.settings.max_attempt == 4


@pytest.mark.parametrize("missing", ["name", "distributors"])
def test_required_node_keys_are_named_when_missing(tmp_path: Path, missing: str) -> None:
    lines = {"name": 'name = "w1"', "distributors": 'distributors = [["127.0.0.1", 5000]]'}
    del lines[missing]
    path = toml(tmp_path, "\n".join(lines.values()) + "\n", name="partial.toml")
    with pytest.raises(ConfigError, match=missing) as info:
        load_node_config(path, environ={})
    assert "partial.toml" in str(info.value)


def test_a_bad_environment_value_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = toml(tmp_path, BASE_NODE)
    with pytest.raises(ConfigError, match="max_attempt"):
        load_node_config(path, environ={"JOBREACTOR_MAX_ATTEMPT": "lots"})


def test_node_config_is_frozen(tmp_path: Path) -> None:
    node = load_node_config(toml(tmp_path, BASE_NODE), environ={})
    with pytest.raises(pydantic.ValidationError):
        node.name = "other"


# --- dist.toml ---------------------------------------------------------------------------------


def test_distributor_config_defaults_and_file(tmp_path: Path) -> None:
    defaults = load_distributor_config(None, environ={})
    assert (defaults.host, defaults.port, defaults.storage) == ("127.0.0.1", 5000, "memory")
    path = toml(
        tmp_path,
        """
        host = "0.0.0.0"
        port = 6000
        advertise = "dist.example:6000"
        max_attempt = 2
        """,
        name="dist.toml",
    )
    dist = load_distributor_config(path, environ={"JOBREACTOR_PORT": "6001"})
    assert dist.host == "0.0.0.0"
    assert dist.port == 6001
    assert dist.advertise == "dist.example:6000"
    assert dist.settings.max_attempt == 2


def test_distributor_config_unknown_key(tmp_path: Path) -> None:
    path = toml(tmp_path, "hots = '0.0.0.0'\n", name="dist.toml")
    with pytest.raises(ConfigError) as info:
        load_distributor_config(path, environ={})
    assert "dist.toml" in str(info.value)
    assert "hots" in str(info.value)
