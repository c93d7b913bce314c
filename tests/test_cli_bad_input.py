"""Every bad-input case of issue 18 exits 2 with one clear line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

NODE = 'distributors = ["127.0.0.1:5000"]\njob_directory = "jobs"\n'
CASES: dict[str, tuple[bytes, list[str], str]] = {
    # name: (node.toml bytes or b"", argv after `jobreactor`, what stderr must mention)
    "non-utf8": (b'name = "w\xff"\n' + NODE.encode(), ["node", "--check"], "not UTF-8"),
    "unknown-field": (b'name = "w-{nope}"\n' + NODE.encode(), ["node", "--check"], "nope"),
    "long-name": (
        b'name = "' + b"x" * 5000 + b'"\n' + NODE.encode(),
        ["node", "--check"],
        "200 characters",
    ),
    "empty-secret": (b'name = "w1"\nsecret = ""\n' + NODE.encode(), ["node", "--check"], "secret"),
    "tls-cert": (
        b'name = "w1"\ntls_cert = "/nope/cert.pem"\n' + NODE.encode(),
        ["node", "--check"],
        "/nope/cert.pem",
    ),
    "discovery-url": (
        b"",
        ["node", "--name", "w1", "--job-directory", "jobs", "--discovery-url", "bogus://x"],
        "bogus://x",
    ),
    "failing-import": (b"", ["distributor", "--port", "0", "--import", "failing_mod"], "boom"),
    "dashboard-port": (b"", ["dashboard", "--port", "99999", "--redis-url", "redis://x"], "99999"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    toml, argv, mentions = CASES[case]
    (tmp_path / "jobs").mkdir()
    (tmp_path / "failing_mod.py").write_text('raise RuntimeError("boom")\n')
    if toml:
        (tmp_path / "node.toml").write_bytes(toml)
        argv = [*argv, "--config", "node.toml"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "jobreactor", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert mentions in done.stderr.strip().splitlines()[-1]
