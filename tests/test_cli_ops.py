"""`jobreactor jobs failed|retrying|reindex|quiet|resume|drain` as real subprocesses against a
real redis-server (cli_ops.py)."""

from __future__ import annotations

import json

import pytest

from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage.redis import RedisStorage
from tests.redis_server import RedisServer, unique_prefix
from tests.test_cli_jobs import jobs_cli, store

pytestmark = pytest.mark.timeout(90)


def _record(i: int, status: JobStatus) -> JobRecord:
    job = JobRecord(id=f"j{i:03d}", name="sync", args={"account": f"acct-{i}"})
    job.status = status
    job.failed_at = 1_700_000_000.0 + i
    job.run_at_ts = 1_800_000_000.0 + i
    job.last_error = "TimeoutError: upstream slow"
    return job


def test_failed_and_retrying_pages_from_the_index(redis_server: RedisServer) -> None:
    url, prefix = redis_server.url, unique_prefix()
    jobs = [_record(i, JobStatus.FAILED) for i in range(25)]
    jobs += [_record(i, JobStatus.ERROR) for i in range(25, 30)]
    jobs += [_record(i, JobStatus.COMPLETE) for i in range(30, 40)]
    store(url, prefix, "w1", jobs)
    page = jobs_cli("failed", "--per-page", "10", "--page", "3", "--json", url=url, prefix=prefix)
    assert page.returncode == 0, page.stderr
    found = json.loads(page.stdout)
    assert (found["total"], found["pages"]) == (25, 3)
    assert [j["id"] for j in found["jobs"]] == [f"j{i:03d}" for i in range(4, -1, -1)]
    search = jobs_cli("failed", "--search", "acct-7", "--json", url=url, prefix=prefix)
    assert [j["id"] for j in json.loads(search.stdout)["jobs"]] == ["j007"]
    retrying = jobs_cli("retrying", url=url, prefix=prefix)
    assert retrying.returncode == 0, retrying.stderr
    assert "retrying jobs: 5 (page 1 of 1)" in retrying.stdout
    assert "j025" in retrying.stdout
    bad = jobs_cli("failed", "--page", "0", url=url, prefix=prefix)
    assert bad.returncode == 2
    assert "page must be between" in bad.stderr


def test_reindex_an_old_store(redis_server: RedisServer) -> None:
    url, prefix = redis_server.url, unique_prefix()
    store(url, prefix, "w1", [_record(i, JobStatus.FAILED) for i in range(3)])
    storage = RedisStorage(url, prefix=prefix)
    import redis

    client = redis.Redis.from_url(url)
    client.delete(f"{storage.keys.node_tag('w1')}:failed")  # as before the index existed
    client.close()
    assert json.loads(jobs_cli("failed", "--json", url=url, prefix=prefix).stdout)["total"] == 0
    done = jobs_cli("reindex", url=url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert "node w1: 3 failed, 0 retrying indexed" in done.stdout
    assert json.loads(jobs_cli("failed", "--json", url=url, prefix=prefix).stdout)["total"] == 3


def test_quiet_a_node_that_is_not_listening(redis_server: RedisServer) -> None:
    answer = jobs_cli("quiet", "ghost", url=redis_server.url, prefix=unique_prefix())
    assert answer.returncode == 1
    assert "ghost is not listening" in answer.stderr
