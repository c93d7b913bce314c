"""Redis-only behaviour: the key layout, records external tools can read, Redis going away and
coming back, and RedisMonitor (SPEC 1.13, 1.14, D16)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from jobreactor.errors import ConfigError, StorageError, StorageUnavailable
from jobreactor.job import JobRecord, JobStatus
from jobreactor.monitor import RedisMonitor
from jobreactor.storage import open_storage
from jobreactor.storage.connect import open_sync
from jobreactor.storage.redis import RedisStorage
from tests.redis_server import RedisServer
from tests.storage.test_contract import as_new, full_record, rec

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SPEC_FIELDS = [
    "id", "name", "args", "last_error", "run_at", "failed_at", "attempt", "period",
    "make_after", "status", "distributor", "on_success", "on_error", "defer",
]  # fmt: skip


@pytest.fixture
def client(any_redis_url: str) -> Iterator[redis.Redis[str]]:
    """A sync client (a cluster client on the cluster): what an external tool sees."""
    plain: redis.Redis[str] = open_sync(any_redis_url, "test", {"decode_responses": True})
    yield plain
    plain.close()


@pytest.fixture
def monitor(any_redis_url: str, prefix: str) -> Iterator[RedisMonitor]:
    with RedisMonitor(any_redis_url, prefix=prefix) as mon:
        yield mon


def all_keys(client: redis.Redis[str], prefix: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{{{prefix}*", count=1000))


# --- layout and readability --------------------------------------------------------------------


async def test_key_layout(
    redis_storage: RedisStorage, client: redis.Redis[str], prefix: str
) -> None:
    p = prefix
    await redis_storage.save_many("w1", [rec("a"), rec("b")])
    await redis_storage.save_many("w2", [rec("c")])
    await redis_storage.queue_save("dist", [rec("q")])
    await redis_storage.acquire("enqueue:x", "a", 60)
    await redis_storage.lock("lock:echo:{}", "tok", 60)
    assert all_keys(client, prefix) == sorted(
        [
            f"{{{p}:n:w1}}:job:a",
            f"{{{p}:n:w1}}:job:b",
            f"{{{p}:n:w1}}:jobs",
            f"{{{p}:n:w2}}:job:c",
            f"{{{p}:n:w2}}:jobs",
            f"{{{p}}}:nodes",
            f"{{{p}:q:dist}}:jobs",
            f"{{{p}:q:dist}}:order",
            f"{{{p}:q:dist}}:seq",
            f"{{{p}:u:enqueue:x}}",
            f"{{{p}:l:lock:echo:{{}}}}",
        ]
    )
    assert client.smembers(f"{{{p}:n:w1}}:jobs") == {"a", "b"}
    assert client.smembers(f"{{{p}}}:nodes") == {"w1", "w2"}
    # One hash tag per owner: a node's keys share a slot, different owners spread out.
    slots = {key: key_slot(key.encode()) for key in all_keys(client, prefix)}
    assert slots[f"{{{p}:n:w1}}:job:a"] == slots[f"{{{p}:n:w1}}:jobs"]
    assert slots[f"{{{p}:q:dist}}:jobs"] == slots[f"{{{p}:q:dist}}:seq"]
    assert len(set(slots.values())) > 3
    assert len(all_keys(client, prefix + "x")) == 0


async def test_records_are_readable_by_external_tools(
    redis_storage: RedisStorage, client: redis.Redis[str], prefix: str
) -> None:
    await redis_storage.save_many("w1", [as_new(full_record("j1", "w1"))])
    await redis_storage.save_many("w1", [full_record("j1", "w1")])
    stored = client.hgetall(f"{{{prefix}:n:w1}}:job:j1")
    assert set(SPEC_FIELDS) <= set(stored)
    args = json.loads(stored["args"])
    assert args["to"] == "a@example.org"
    assert args["nested"] == {"list": [1, "x", None, True, {"deep": -0.25}]}
    assert base64.b64decode(args["blob"]["__bytes__"]) == b"\x00\xff raw"
    assert stored["attempt"] == "2"
    assert stored["status"] == "error"
    assert stored["defer"] == "true"
    assert float(stored["run_at"]) == 1_700_000_001.5
    assert stored["last_error"] == "RuntimeError: boom"
    assert json.loads(stored["from_newer_peer"]) == {"k": [1, 2]}  # extras: JSON fields
    # A fresh job: the SPEC fields that have a value are all there, None ones are absent.
    await redis_storage.save_many("w1", [JobRecord(id="j2", name="echo", args={})])
    fresh = client.hgetall(f"{{{prefix}:n:w1}}:job:j2")
    assert fresh == {
        "id": "j2",
        "name": "echo",
        "args": "{}",
        "attempt": "0",
        "status": "new",
        "period": "0.0",
        "make_after": "0.0",
        "distributor": "",
        "defer": "false",
    }


async def test_a_hand_written_record_loads(
    redis_storage: RedisStorage, client: redis.Redis[str], prefix: str
) -> None:
    """Another tool (or the Ruby gem's field set) writes a job; we read it with types."""
    client.hset(
        f"{{{prefix}:n:w1}}:job:77",
        mapping={"name": "echo", "args": '{"a": 1}', "attempt": "1.0", "period": "5",
                 "defer": "true", "status": "error", "weird": "not json"},
    )  # fmt: skip
    client.sadd(f"{{{prefix}:n:w1}}:jobs", "77")
    loaded = await redis_storage.load("w1", "77")
    assert loaded is not None
    assert (loaded.id, loaded.args, loaded.attempt, loaded.period) == ("77", {"a": 1}, 1, 5.0)
    assert loaded.defer is True
    assert loaded.extra == {"weird": "not json"}
    assert [job.id for job in await redis_storage.jobs_for("w1", unfinished_only=True)] == ["77"]


async def test_a_malformed_record_is_a_storage_error_and_skipped_by_jobs_for(
    redis_storage: RedisStorage, client: redis.Redis[str], prefix: str
) -> None:
    await redis_storage.save_many("w1", [rec("good")])
    client.hset(f"{{{prefix}:n:w1}}:job:bad", mapping={"name": "x", "attempt": "many"})
    client.sadd(f"{{{prefix}:n:w1}}:jobs", "bad")
    with pytest.raises(StorageError, match=r"bad.*attempt"):
        await redis_storage.load("w1", "bad")
    assert [job.id for job in await redis_storage.jobs_for("w1")] == ["good"]


async def test_lock_value_carries_token_and_redis_expiry(
    redis_storage: RedisStorage, client: redis.Redis[str], prefix: str
) -> None:
    server_ms = int(client.time()[0]) * 1000
    await redis_storage.lock("L", "tok", 60)
    value = client.get(f"{{{prefix}:l:L}}")
    assert value is not None
    match = re.fullmatch(r"tok:(\d+)", value)
    assert match is not None
    assert server_ms + 58_000 < int(match.group(1)) < server_ms + 62_000
    # Kept past its expiry (so unlock can still answer "expired"), not forever.
    assert client.pttl(f"{{{prefix}:l:L}}") > 60_000
    await redis_storage.lock("forever", "tok", None)
    assert client.get(f"{{{prefix}:l:forever}}") == "tok:0"
    assert client.pttl(f"{{{prefix}:l:forever}}") == -1


async def test_lock_expiry_uses_the_redis_clock(
    redis_storage: RedisStorage, client: redis.Redis[str], prefix: str
) -> None:
    """An expiry in the past on Redis's clock is expired, whatever the client's clock says."""
    seconds, _ = client.time()
    client.set(f"{{{prefix}:l:L}}", f"old:{(int(seconds) - 40) * 1000}")
    assert await redis_storage.lock_holder("L") is None
    assert await redis_storage.unlock("L", "old") == "expired"
    assert await redis_storage.lock("L", "new", 60)
    client.set(f"{{{prefix}:l:plain}}", "true")  # resque-lock style value: held, no expiry
    assert await redis_storage.lock_holder("plain") == "true"
    assert await redis_storage.lock("plain", "new", 60) is False


async def test_a_retried_claim_gets_the_same_jobs(redis_storage: RedisStorage) -> None:
    """redis-py resends a command whose reply was lost; the claim must not lose the jobs then.

    (Drives the claim script directly: a lost reply can't be produced on demand.)
    """
    await redis_storage.save_many("gone", [rec("a"), rec("b")])
    keys = redis_storage.keys
    statuses = redis_storage._indexes("gone")[1:]  # failed and retrying zsets
    jobs = [keys.job("gone", "a"), keys.job("gone", "b")]
    script_keys = [keys.index("gone"), keys.claim("gone", "token:0"), *statuses, *jobs]
    first = await redis_storage._script("CLAIM_INDEXED", script_keys, ["a", "b"])
    again = await redis_storage._script("CLAIM_INDEXED", script_keys, ["a", "b"])
    assert [first[0], first[2]] == ["a", "b"]
    assert again == first
    assert await redis_storage.jobs_for("gone") == []
    other_token = [keys.index("gone"), keys.claim("gone", "token2:0"), *statuses, *jobs]
    assert await redis_storage._script("CLAIM_INDEXED", other_token, ["a", "b"]) == []


async def test_the_source_never_uses_keys() -> None:
    """SPEC 1.13 PY-REQ: no KEYS (it blocks Redis and globbed other nodes' jobs in Ruby)."""
    for path in [ROOT / "jobreactor/storage/redis.py", ROOT / "jobreactor/monitor.py"]:
        source = path.read_text()
        assert ".keys(" not in source, path
        assert "'KEYS'" not in source
        assert '"KEYS"' not in source


async def test_open_storage_builds_redis_with_a_prefix(
    any_redis_url: str, client: redis.Redis[str], prefix: str
) -> None:
    store = open_storage("redis", any_redis_url, prefix=prefix)
    try:
        assert isinstance(store, RedisStorage)
        assert (store.kind, store.durable) == ("redis", True)
        await store.save_many("w1", [rec("a")])
        assert client.exists(f"{{{prefix}:n:w1}}:job:a") == 1
    finally:
        await store.aclose()


def test_bad_prefix_or_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prefix"):
        RedisStorage("redis://127.0.0.1:1", prefix="a{b}")
    with pytest.raises(ConfigError, match="prefix"):
        RedisMonitor("redis://127.0.0.1:1", prefix="")
    with pytest.raises(ConfigError, match="redis_url"):
        RedisStorage("http://:secret@nowhere")


# --- Redis going away ----------------------------------------------------------------------


async def test_redis_down_is_storage_unavailable_then_recovers(
    own_redis_server: RedisServer, prefix: str
) -> None:
    store = RedisStorage(own_redis_server.url, prefix=prefix)
    try:
        await store.save_many("w1", [rec("a")])
        own_redis_server.stop()
        calls = {
            "save_many": store.save_many("w1", [rec("b")]),
            "load": store.load("w1", "a"),
            "jobs_for": store.jobs_for("w1"),
            "claim": store.claim("w1", ["a"]),
            "queue_save": store.queue_save("d", [rec("q")]),
            "queue_load": store.queue_load("d"),
            "acquire": store.acquire("k", "o", 5),
            "lock": store.lock("L", "t", 5),
            "unlock": store.unlock("L", "t"),
        }
        for operation, call in calls.items():
            with pytest.raises(StorageUnavailable) as caught:
                await call
            assert type(caught.value) is StorageUnavailable
            message = str(caught.value)
            assert f"during {operation}" in message
            assert "redis_url" in message
            assert "redis-server" in message
            assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
        own_redis_server.start()  # empty again: no persistence in the test server
        await store.save_many("w1", [rec("b")])
        assert [job.id for job in await store.jobs_for("w1")] == ["b"]
        assert await store.lock("L", "t", 5)
    finally:
        await store.aclose()
        await store.aclose()


def test_error_messages_never_show_the_password() -> None:
    async def down() -> None:
        store = RedisStorage("redis://:hunter2@127.0.0.1:1/0", prefix="x")
        try:
            await store.load("w1", "a")
        finally:
            await store.aclose()

    with pytest.raises(StorageUnavailable) as caught:
        asyncio.run(down())
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


def test_monitor_with_redis_down_is_storage_unavailable(own_redis_server: RedisServer) -> None:
    with RedisMonitor(own_redis_server.url) as mon:
        assert mon.nodes() == []
        own_redis_server.stop()
        with pytest.raises(StorageUnavailable, match="during jobs_for"):
            mon.jobs_for("w1")
        own_redis_server.start()
        assert mon.nodes() == []


# --- RedisMonitor (SPEC 1.14) -------------------------------------------------------------------


def write_ruby_style_record(client: redis.Redis[str], prefix: str, node: str, job_id: str) -> None:
    """The hand-written record of the Ruby RedisMonitor spec, as a tool would HSET it."""
    client.hset(
        f"{{{prefix}:n:{node}}}:job:{job_id}",
        mapping={
            "id": job_id, "name": "ruby_job", "args": json.dumps({"arg1": 1}),
            "last_error": "error", "run_at": "1", "failed_at": "2", "attempt": "1",
            "period": "0", "make_after": "0", "status": "error", "distributor": "localhost:5000",
            "on_success": "succ-1", "on_error": "err-1", "defer": "false",
        },
    )  # fmt: skip
    client.sadd(f"{{{prefix}:n:{node}}}:jobs", job_id)
    client.sadd(f"{{{prefix}}}:nodes", node)


RUBY_RECORD = {
    "id": "r1",
    "name": "ruby_job",
    "args": {"arg1": 1},
    "last_error": "error",
    "run_at": 1.0,
    "failed_at": 2.0,
    "attempt": 1,
    "period": 0.0,
    "make_after": 0.0,
    "status": "error",
    "distributor": "localhost:5000",
    "on_success": "succ-1",
    "on_error": "err-1",
    "defer": False,
}


def test_monitor_round_trips_the_hand_written_record(
    monitor: RedisMonitor, client: redis.Redis[str], prefix: str
) -> None:
    write_ruby_style_record(client, prefix, "node", "r1")
    loaded = monitor.load("r1")
    assert loaded == RUBY_RECORD
    assert type(loaded["attempt"]) is int
    assert monitor.jobs_for("node") == {"r1": RUBY_RECORD}
    assert monitor.jobs_for("node", to_be_retried=True) == {"r1": RUBY_RECORD}
    assert monitor.node_of("r1") == "node"
    assert monitor.nodes() == ["node"]


async def test_monitor_reads_what_the_storage_wrote(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    await redis_storage.save_many("w1", [as_new(full_record("j1", "w1"))])
    await redis_storage.save_many("w1", [full_record("j1", "w1"), rec("j2", JobStatus.COMPLETE)])
    loaded = monitor.load("j1")
    assert loaded is not None
    assert JobRecord.from_dict(loaded) == full_record("j1", "w1")
    assert {k: v for k, v in loaded.items() if k in full_record().to_dict()} == full_record(
        "j1", "w1"
    ).to_dict()
    assert loaded["args"]["blob"] == b"\x00\xff raw"
    assert sorted(monitor.jobs_for("w1")) == ["j1", "j2"]
    assert sorted(monitor.jobs_for("w1", to_be_retried=True)) == ["j1"]
    assert monitor.load("missing") is None


async def test_monitor_destroy_by_job_id(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    await redis_storage.save_many("w1", [rec("a"), rec("b")])
    await redis_storage.save_many("w2", [rec("c")])
    assert monitor.destroy("a") is True
    assert monitor.destroy("a") is False
    assert monitor.load("a") is None
    assert [job.id for job in await redis_storage.jobs_for("w1")] == ["b"]
    assert monitor.destroy("c") is True
    assert monitor.nodes() == ["w1"]
    assert await redis_storage.nodes() == ["w1"]


async def test_monitor_destroy_all_jobs_for_touches_only_that_node(
    redis_storage: RedisStorage, monitor: RedisMonitor
) -> None:
    """D16: the Ruby pattern `*node_*` also deleted "redis_node"'s jobs."""
    await redis_storage.save_many("node", [rec(f"n{i}") for i in range(2100)])
    await redis_storage.save_many("redis_node", [rec("r1"), rec("r2")])
    await redis_storage.save_many("node_2", [rec("x")])
    assert monitor.destroy_all_jobs_for("node") == 2100
    assert monitor.destroy_all_jobs_for("node") == 0
    assert monitor.destroy_all_jobs_for("nobody") == 0
    assert await redis_storage.jobs_for("node") == []
    assert sorted(monitor.jobs_for("redis_node")) == ["r1", "r2"]
    assert sorted(monitor.jobs_for("node_2")) == ["x"]
    assert monitor.nodes() == ["node_2", "redis_node"]
    assert monitor.jobs_for("node") == {}
