"""Config errors in our words, through the CLI: exit 2, the file, the key, what we expected,
an example, a did-you-mean for unknown keys; each problem once (issue 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobreactor import ConfigError, Reactor
from jobreactor.cli import main
from jobreactor.config import NodeConfig, ReactorConfig

pytestmark = pytest.mark.timeout(60)

BASE = 'name = "w"\ndistributors = ["127.0.0.1:5000"]\n'


def run_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, command: str = "node"
) -> str:
    config = tmp_path / f"{command}.toml"
    config.write_text(text)
    assert main([command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err  # the file is named
    return err


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        (
            'name = "w"\ndistributors = ["localhost"]\n',
            [
                'distributors[0] = "localhost": expected "host:port"',
                'e.g. distributors = ["127.0.0.1:5000"]',
            ],
        ),
        (
            'name = "w"\ndistributors = ["localhost:http"]\n',
            ['distributors[0].port = "http": expected "host:port"'],
        ),
        (
            BASE + 'concurrency = "lots"\n',
            ['concurrency = "lots": expected a whole number, e.g. concurrency = 100'],
        ),
        (BASE + "concurency = 4\n", ["unknown key 'concurency' (did you mean 'concurrency'?)"]),
        (BASE + "max_attempt = 0\n", ["max_attempt = 0: expected a number ≥ 1"]),
        (
            BASE + 'retry_strategy = "fast"\n',
            ["retry_strategy = \"fast\": expected one of 'linear' or 'exponential'"],
        ),
        (
            BASE + 'logger_method = "LOUD"\n',
            ["expected a logging level name", "e.g. logger_method"],
        ),
        ('distributors = ["127.0.0.1:5000"]\n', ['name is required, e.g. name = "worker_1"']),
        ('name = "w"\ndistributors = []\n', ["distributors = []: expected at least one entry"]),
        (BASE + "[settings]\nmax_atempt = 3\n", ["did you mean 'max_attempt'?"]),
        (BASE + "zzzz = 1\n", ["unknown key 'zzzz'"]),
    ],
)
def test_node_config_problems_read_as_our_own_words(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, wanted: list[str]
) -> None:
    err = run_cli(capsys, tmp_path, text)
    for part in wanted:
        assert part in err
    assert "Input should" not in err  # nothing of pydantic's phrasing
    assert "did you mean" not in err or "unknown key" in err


def test_a_key_both_node_and_setting_is_reported_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = run_cli(capsys, tmp_path, BASE + 'concurrency = "lots"\n')
    assert err.count("concurrency") == 2  # the message once: the key and its example
    assert len(err.strip().splitlines()) == 1


def test_several_problems_one_line_each(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = run_cli(capsys, tmp_path, 'name = "w"\ndistributors = ["x"]\nconcurency = 1\n')
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert any("distributors[0]" in line for line in lines)
    assert any("did you mean 'concurrency'" in line for line in lines)


def test_distributor_config_unknown_key_gets_a_did_you_mean(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = run_cli(capsys, tmp_path, 'hots = "0.0.0.0"\n', command="distributor")
    assert "unknown key 'hots' (did you mean 'host'?)" in err


def test_environment_value_says_where_it_came_from(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBREACTOR_CONCURRENCY", "lots")
    err = run_cli(capsys, tmp_path, BASE)
    assert "(from the environment: JOBREACTOR_CONCURRENCY)" in err


def test_the_same_words_from_python(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Reactor(concurency=3)
    assert str(info.value) == "JR.config: unknown key 'concurency' (did you mean 'concurrency'?)"


def test_real_process_exits_2_with_the_message_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('name = "w"\ndistributors = ["localhost"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "jobreactor", "node", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f'{config}: distributors[0] = "localhost": expected "host:port"' in proc.stderr
    assert proc.stdout == ""


def test_examples_node_toml_lists_every_key_a_node_understands() -> None:
    text = (Path(__file__).parent.parent / "examples" / "node.toml").read_text()
    keys = (set(NodeConfig.model_fields) - {"settings"}) | set(ReactorConfig.model_fields)
    missing = [k for k in sorted(keys) if f"\n{k} = " not in text and f"\n# {k} = " not in text]
    assert missing == []
    assert "refused for now" not in text
