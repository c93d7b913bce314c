"""`jobreactor jobs ...` as a real subprocess against a real redis-server (SPEC 1.14, issue 4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time

import pytest

from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage.redis import RedisStorage
from tests.conftest import eventually
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.timeout(60)

NOW = time.time()
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


def jobs_cli(
    *args: str, url: str | None = None, prefix: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jobreactor", "jobs"]
    if url is not None:
        command += ["--redis-url", url]
    if prefix is not None:
        command += ["--prefix", prefix]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBREACTOR_")}
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **(env or {})},
        check=False,
    )


def store(url: str, prefix: str, node: str, jobs: list[JobRecord]) -> None:
    async def save() -> None:
        storage = RedisStorage(url, prefix=prefix)
        try:
            await storage.save_many(node, jobs)
        finally:
            await storage.aclose()

    asyncio.run(save())


def load(url: str, prefix: str, node: str, job_id: str) -> JobRecord | None:
    async def get() -> JobRecord | None:
        storage = RedisStorage(url, prefix=prefix)
        try:
            return await storage.load(node, job_id)
        finally:
            await storage.aclose()

    return asyncio.run(get())


class Jobs:
    """A prefix of its own with a few jobs on two nodes, and the CLI pointed at it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = unique_prefix()
        store(
            self.url,
            self.prefix,
            "w1",
            [
                JobRecord(
                    id="failed01",
                    name="send_mail",
                    args={"to": "a@example.org"},
                    status=JobStatus.FAILED,
                    attempt=10,
                    run_at_ts=NOW - 100,
                    failed_at=NOW - 50,
                    last_error="RuntimeError: smtp is down\nTraceback ...\n" + "x" * 200,
                    lease=3,
                ),
                JobRecord(
                    id="later001",
                    name="report",
                    args={},
                    status=JobStatus.QUEUED,
                    run_at_ts=NOW + 3600,
                ),
            ],
        )
        store(
            self.url,
            self.prefix,
            "w2",
            [
                JobRecord(
                    id="running1",
                    name="resize",
                    args={"w": 100},
                    status=JobStatus.IN_PROGRESS,
                    attempt=1,
                    run_at_ts=NOW,
                )
            ],
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return jobs_cli(*args, url=self.url, prefix=self.prefix)

    def load(self, node: str, job_id: str) -> JobRecord | None:
        return load(self.url, self.prefix, node, job_id)


@pytest.fixture
def jobs(any_redis_url: str) -> Jobs:
    """On a single server, then on a 3-master cluster."""
    return Jobs(any_redis_url)


def rows(out: str) -> list[str]:
    """The table's body lines: piped output is plain (a `# title`, a header, tab-separated)."""
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert not any(char in out for char in "│┃━─"), "no box drawing when piped"
    return lines[1:]


def first(lines: list[str]) -> list[str]:
    return [line.split("\t")[0] for line in lines]


def test_list_shows_every_job_soonest_first(jobs: Jobs) -> None:
    done = jobs("list")
    assert done.returncode == 0, done.stderr
    lines = rows(done.stdout)
    assert first(lines) == ["failed01", "running1", "later001"]
    failed, running, later = lines
    assert "w1" in failed
    assert "send_mail" in failed
    assert "failed" in failed
    assert "10" in failed
    # last_error: its first line only, truncated.
    assert "RuntimeError: smtp is down" in failed
    assert "Traceback" not in failed
    assert "x" * 100 not in failed
    assert "in progress" in running
    assert "w2" in running
    # next run as ISO time for unfinished jobs; none for a failed one.
    expected = dt.datetime.fromtimestamp(NOW + 3600).astimezone().isoformat(timespec="seconds")
    assert expected in later
    assert not ISO.search(failed)
    assert "jobs (3 of 3)" in done.stdout


def test_list_filters_and_limits(jobs: Jobs) -> None:
    by_status = jobs("list", "--status", "failed")
    assert first(rows(by_status.stdout)) == ["failed01"]
    # "in_progress" is accepted for "in progress" (no quoting needed).
    by_status = jobs("list", "--status", "in_progress")
    assert first(rows(by_status.stdout)) == ["running1"]
    by_node = jobs("list", "--node", "w1")
    assert sorted(first(rows(by_node.stdout))) == [
        "failed01",
        "later001",
    ]
    limited = jobs("list", "--limit", "1")
    assert len(rows(limited.stdout)) == 1
    assert "jobs (1 of 3)" in limited.stdout
    empty = jobs("list", "--node", "nobody")
    assert empty.returncode == 0
    assert "no jobs on node nobody" in empty.stdout
    bad = jobs("list", "--status", "bogus")
    assert bad.returncode == 2
    assert "unknown status 'bogus'" in bad.stderr


def test_show_prints_the_record(jobs: Jobs) -> None:
    done = jobs("show", "failed01")
    assert done.returncode == 0, done.stderr
    assert "job failed01 on node w1" in done.stdout
    assert "a@example.org" in done.stdout
    assert "smtp is down" in done.stdout
    assert ISO.search(done.stdout)  # times readable as well as raw

    as_json = jobs("show", "failed01", "--json")
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert shown["node"] == "w1"
    record = shown["job"]
    assert record["id"] == "failed01"
    assert record["status"] == "failed"
    assert record["attempt"] == 10
    assert record["args"] == {"to": "a@example.org"}
    assert record["failed_at"] == pytest.approx(NOW - 50)

    missing = jobs("show", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "no job nope"


def test_retry_resets_a_failed_job(jobs: Jobs) -> None:
    done = jobs("retry", "failed01")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "retried failed01"
    job = jobs.load("w1", "failed01")
    assert job is not None
    assert (job.status, job.attempt, job.lease) == (JobStatus.NEW, 0, 0)
    assert job.run_at_ts == pytest.approx(time.time(), abs=30)
    assert job.last_error is not None
    assert job.last_error.startswith("RuntimeError: smtp is down")

    again = jobs("retry", "failed01")  # it is not failed any more
    assert again.returncode == 1
    assert again.stderr.strip() == "no failed job failed01"
    for job_id in ("running1", "nope"):
        refused = jobs("retry", job_id)
        assert refused.returncode == 1
        assert refused.stderr.strip() == f"no failed job {job_id}"
    still = jobs.load("w2", "running1")
    assert still is not None
    assert still.status == JobStatus.IN_PROGRESS


async def test_retry_wakes_the_listening_node(jobs: Jobs) -> None:
    storage = RedisStorage(jobs.url, prefix=jobs.prefix)
    received: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for job_id in storage.commands("w1"):
            await received.put(job_id)

    task = asyncio.create_task(listen())
    try:

        async def subscribed() -> bool:
            return await storage.send_command("w1", "ping") > 0

        await eventually(subscribed, 10)
        assert await asyncio.wait_for(received.get(), 5) == "ping"
        done = await asyncio.to_thread(jobs, "retry", "failed01")
        assert done.returncode == 0, done.stderr
        assert await asyncio.wait_for(received.get(), 5) == "failed01"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await storage.aclose()


def test_destroy_one_job(jobs: Jobs) -> None:
    done = jobs("destroy", "later001")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "destroyed later001"
    assert jobs.load("w1", "later001") is None
    assert jobs.load("w1", "failed01") is not None
    again = jobs("destroy", "later001")
    assert again.returncode == 1
    assert again.stderr.strip() == "no job later001"


def test_destroy_all_needs_yes(jobs: Jobs) -> None:
    refused = jobs("destroy-all", "--node", "w1")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert jobs.load("w1", "failed01") is not None

    done = jobs("destroy-all", "--node", "w1", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "destroyed 2 job(s) of node w1"
    assert jobs.load("w1", "failed01") is None
    assert jobs.load("w1", "later001") is None
    assert jobs.load("w2", "running1") is not None  # other nodes untouched


def test_stats_counts_per_node_and_status(jobs: Jobs) -> None:
    done = jobs("stats")
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "node" in line and "total" in line)
    assert header.split("\t") == ["node", "in progress", "queued", "failed", "total"]
    table = {cells[0]: cells[1:] for cells in (line.split("\t") for line in rows(done.stdout))}
    assert table == {
        "w1": ["0", "1", "1", "2"],
        "w2": ["1", "0", "0", "1"],
        "all": ["1", "1", "1", "3"],
    }


def test_stats_of_an_empty_prefix(redis_server: RedisServer) -> None:
    done = jobs_cli("stats", url=redis_server.url, prefix=unique_prefix())
    assert done.returncode == 0, done.stderr
    assert "no jobs stored" in done.stdout


def test_url_and_prefix_default_from_the_environment(jobs: Jobs) -> None:
    env = {"JOBREACTOR_HIREDIS_URL": jobs.url, "JOBREACTOR_REDIS_PREFIX": jobs.prefix}
    done = jobs_cli("list", "--node", "w2", env=env)
    assert done.returncode == 0, done.stderr
    assert "running1" in done.stdout


def test_unreachable_redis_is_exit_3_in_one_line() -> None:
    done = jobs_cli("list", url="redis://:hunter2@127.0.0.1:1/0")
    assert done.returncode == 3
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jobreactor: cannot reach redis at redis://:***@127.0.0.1:1/0: ")
    assert lines[0].endswith("is redis-server running?")
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr
    for command in (["show", "x"], ["retry", "x"], ["destroy", "x"], ["stats"]):
        assert jobs_cli(*command, url="redis://127.0.0.1:1/0").returncode == 3, command


def test_bad_url_is_a_configuration_error() -> None:
    done = jobs_cli("stats", url="http://localhost:6379")
    assert done.returncode == 2
    assert "invalid redis_url" in done.stderr
    assert "Traceback" not in done.stderr


def test_list_show_stats_as_json(jobs: Jobs) -> None:
    listed = json.loads(jobs("list", "--json").stdout)
    assert listed["stored"] == 3
    assert [(j["node"], j["id"]) for j in listed["jobs"]] == [
        ("w1", "failed01"),
        ("w2", "running1"),
        ("w1", "later001"),
    ]
    assert listed["jobs"][0]["args"] == {"to": "a@example.org"}
    failed = json.loads(jobs("list", "--status", "failed", "--json").stdout)
    assert [j["id"] for j in failed["jobs"]] == ["failed01"]
    assert failed["stored"] is None  # a filtered count would mean reading every record
    stats = json.loads(jobs("stats", "--json").stdout)
    assert stats == {"nodes": {"w1": {"failed": 1, "queued": 1}, "w2": {"in progress": 1}}}


def test_list_pages_through_a_big_node(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    many = [JobRecord(id=f"j{i:05d}", name="bulk", args={}, run_at_ts=NOW + i) for i in range(2500)]
    store(redis_server.url, prefix, "big", many)
    done = jobs_cli("list", "--limit", "5", url=redis_server.url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert "# jobs (5 of 2500)" in done.stdout
    assert len(rows(done.stdout)) == 5
    everything = jobs_cli("list", "--limit", "3000", "--json", url=redis_server.url, prefix=prefix)
    ids = [job["id"] for job in json.loads(everything.stdout)["jobs"]]
    assert sorted(ids) == [job.id for job in many]  # each once, across SSCAN pages
