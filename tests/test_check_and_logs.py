"""`jobreactor node --check [--probe]` and JSON logs (`log_format = "json"`)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobreactor import Reactor, Registry
from jobreactor.logs import JsonFormatter
from tests.conftest import NODE_JOBS, Recorder, make_test_reactor
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


def check(config: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobreactor", "node", "--config", str(config), "--check", *more],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def node_toml(tmp_path: Path, body: str, jobs: str = NODE_JOBS) -> Path:
    directory = tmp_path / "jobs"
    directory.mkdir(exist_ok=True)
    (directory / "jobs.py").write_text(jobs)
    config = tmp_path / "node.toml"
    config.write_text(f'name = "w1"\njob_directory = "jobs"\n{body}\n')
    return config


def test_check_loads_the_jobs_and_probes(reactor: Reactor, tmp_path: Path) -> None:
    port = reactor.distributor.address_port()
    config = node_toml(tmp_path, f'distributors = [["127.0.0.1", {port}]]')
    done = check(config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   jobs: 5 from" in done.stdout
    assert "simple" in done.stdout
    probed = check(config, "--probe")
    assert probed.returncode == 0, probed.stdout
    assert f"ok   distributor 127.0.0.1:{port} accepts connections" in probed.stdout
    assert reactor.nodes() == []  # no node was started


def test_check_fails_on_a_dead_distributor_or_redis(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there once closed
    config = node_toml(
        tmp_path,
        f'distributors = [["127.0.0.1", {port}]]\nstorage = "redis"\n'
        f'redis_url = "redis://127.0.0.1:{port}"',
    )
    done = check(config, "--probe")
    assert done.returncode == 1
    assert f"FAIL distributor 127.0.0.1:{port}" in done.stdout
    assert f"FAIL redis redis://127.0.0.1:{port}" in done.stdout


def test_check_with_redis_storage_pings_it(redis_server: RedisServer, tmp_path: Path) -> None:
    config = node_toml(
        tmp_path,
        f'distributors = [["127.0.0.1", 1]]\nstorage = "redis"\nredis_url = "{redis_server.url}"',
    )
    done = check(config, "--probe")
    assert f"ok   redis {redis_server.url} answers" in done.stdout
    assert done.returncode == 1  # port 1: the distributor probe fails


def test_check_fails_when_jobs_do_not_load(tmp_path: Path) -> None:
    config = node_toml(tmp_path, 'distributors = [["127.0.0.1", 1]]', jobs="raise ImportError(1)")
    done = check(config)
    assert done.returncode == 2
    assert "FAIL jobs:" in done.stdout
    bad = node_toml(tmp_path, 'distributors = [["127.0.0.1", 1]]\nmetrics_port = -1')
    refused = check(bad)
    assert refused.returncode == 2
    assert "metrics_port" in refused.stderr


def test_json_log_lines_carry_the_job_fields() -> None:
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    handler = Collect()
    logger = logging.getLogger("jobreactor.node")
    logger.addHandler(handler)
    reactor = make_test_reactor(log_job_processing=True, logger_method="DEBUG")
    try:
        reactor.start_distributor("127.0.0.1", 0)
        registry = Registry()

        @registry.job("mail")
        def mail(args: dict[str, Any]) -> None:
            if args["fail"]:
                raise RuntimeError("smtp down")

        address = ("127.0.0.1", reactor.distributor.address_port())
        reactor.start_node("jsonnode", "memory", [address], registry=registry)
        done = Recorder()
        ok = reactor.enqueue("mail", {"fail": False}, success=done)
        bad = reactor.enqueue("mail", {"fail": True}, {"max_attempt": 1}, error=done)
        done.wait(2)
    finally:
        reactor.stop(timeout=10)
        logger.removeHandler(handler)
    assert ok is not None
    assert bad is not None
    by_job = {(line.get("job_id"), line["message"].split()[0]): line for line in lines}
    start = by_job[(ok.id, "start")]
    assert start["job"] == "mail"
    assert start["node"] == "jsonnode"
    assert start["attempt"] == 1
    assert start["distributor"] == f"127.0.0.1:{address[1]}"
    assert start["level"] == "DEBUG"  # one INFO line per job: its outcome
    complete = by_job[(ok.id, "complete")]
    assert complete["outcome"] == "complete"
    assert complete["level"] == "INFO"
    assert complete["duration_s"] >= 0
    failed = by_job[(bad.id, "failed")]  # a final failure: its own outcome, loud, traced
    assert failed["outcome"] == "failed"
    assert failed["level"] == "WARNING"
    assert "smtp down" in failed["message"]
    assert 'raise RuntimeError("smtp down")' in failed["exc_info"]
    assert [key for key in by_job if key[0] == ok.id] == [(ok.id, "start"), (ok.id, "complete")]


def test_cli_node_writes_json_logs(reactor: Reactor, cli_node: Any, tmp_path: Path) -> None:
    node = cli_node("jsonlog", ("127.0.0.1", reactor.distributor.address_port()), log_format="json")
    reactor.wait_for_node("jsonlog", timeout=20)
    handle = reactor.enqueue("simple", {"out": str(tmp_path / "o.jsonl"), "i": 1})
    assert handle is not None
    handle.result(20)
    node.stop()
    # Every line is one JSON object (per-job lines: see the test above; this node has them off).
    records = [json.loads(line) for line in node.log_text().splitlines() if line.strip()]
    assert any(r["message"].startswith("node jsonlog started") for r in records)
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
