"""Batches (the gem distributed_job, SPEC §5): its spec ported, on memory and on a real Redis."""

from __future__ import annotations

import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from jobreactor.batch import (
    DEFAULT_TTL,
    Batch,
    MemoryStore,
    close_redis_clients,
    open_batch,
)
from jobreactor.errors import AlreadyClosed, StorageError, StorageUnavailable
from jobreactor.storage.connect import is_cluster, open_sync
from jobreactor.storage.keys import batch_keys
from tests.conftest import wait_until
from tests.redis_server import RedisServer, _free_port

TTL = 100  # the gem's spec uses ttl: 100

# --- a real redis-server (the shared fixture; fails, never skips, without redis-server) ----


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    yield redis_server.url
    close_redis_clients()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis[str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


# --- the two storages behind one fixture ----------------------------------------------------------


@dataclass
class Env:
    kind: str
    namespace: str
    url: str | None
    raw: redis.Redis[str] | None

    def make(self, token: str | None = None, ttl: int = TTL, **kw: Any) -> Batch:
        kw.setdefault("namespace", self.namespace)
        return open_batch(token, ttl, redis_url=self.url, **kw)

    def ttls(self, batch: Batch) -> tuple[float, float]:
        """(parts, state) TTLs: the TTL command on Redis, `remaining_ttl` in memory."""
        if self.raw is not None:
            _, parts_key, state_key = batch_keys(
                batch.namespace, batch.token, cluster=is_cluster(self.raw)
            )
            parts: Any = self.raw.ttl(parts_key)
            state: Any = self.raw.ttl(state_key)
            return float(parts), float(state)
        parts_left, state_left = batch.remaining_ttl("parts"), batch.remaining_ttl("state")
        assert parts_left is not None
        assert state_left is not None
        return parts_left, state_left

    def assert_ttls(self, batch: Batch, ttl: int = TTL) -> None:
        parts, state = self.ttls(batch)
        assert 0 <= parts <= ttl
        assert 0 <= state <= ttl


@pytest.fixture(params=["memory", "redis", "cluster"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """Memory, a single redis-server, a 3-master Redis Cluster."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    if request.param == "memory":
        yield Env("memory", namespace, None, None)
        return
    if request.param == "redis":
        yield Env(
            "redis", namespace, request.getfixturevalue("redis_url"), request.getfixturevalue("raw")
        )
        return
    url = request.getfixturevalue("redis_cluster").url
    client: Any = open_sync(url, "test", {"decode_responses": True})
    yield Env("redis", namespace, url, client)
    client.close()
    close_redis_clients()


@pytest.fixture
def batch(env: Env) -> Batch:
    return env.make()


ITEMS = ["item1", "item2", "item3"]


# --- push (the gem's private push) --------------------------------------------------------------


def test_push_increments_count_by_one(batch: Batch) -> None:
    assert batch.count() == 0
    batch._push("part")
    assert batch.count() == 1


def test_push_of_a_present_part_counts_once(batch: Batch) -> None:
    batch._push("part")
    batch._push("part")
    assert batch.count() == 1
    assert batch.total() == 1


def test_push_increments_total_by_one(batch: Batch) -> None:
    assert batch.total() == 0
    batch._push("part")
    assert batch.total() == 1


def test_push_adds_the_part(batch: Batch) -> None:
    batch._push("part1")
    batch._push("part2")
    assert set(batch.open_parts()) == {"part1", "part2"}


def test_push_sets_an_expiry_on_both_keys(env: Env, batch: Batch) -> None:
    batch._push("part")
    env.assert_ttls(batch)


# --- push_each ----------------------------------------------------------------------------------


def test_push_each_part_ids_are_the_indexes(batch: Batch) -> None:
    for _ in batch.push_each(ITEMS):
        pass
    assert set(batch.open_parts()) == {"0", "1", "2"}


def test_push_each_yields_each_item_with_its_part_id_in_order(batch: Batch) -> None:
    assert list(batch.push_each(ITEMS)) == [("item1", "0"), ("item2", "1"), ("item3", "2")]


def test_push_each_is_one_behind_and_closes_before_the_last_item(batch: Batch) -> None:
    pulled: list[str] = []

    def source() -> Iterator[str]:
        for item in ITEMS:
            pulled.append(item)
            yield item

    seen = 0
    for item, part in batch.push_each(source()):
        i = int(part)
        last = i == len(ITEMS) - 1
        assert item == ITEMS[i]
        # Item i+1 was pulled and pushed before item i is handed out.
        ahead = min(i + 2, len(ITEMS))
        assert pulled == ITEMS[:ahead]
        assert set(batch.open_parts()) == {str(j) for j in range(ahead)}
        assert batch.open_part(part)
        assert batch.closed() is last  # closed right before the last item, not earlier
        assert batch.finished() is False  # this part is still open
        seen += 1
    assert seen == len(ITEMS)
    assert batch.closed()
    assert (batch.count(), batch.total()) == (3, 3)


def test_push_each_lets_an_immediate_worker_see_completion_exactly_at_the_last_part(
    batch: Batch,
) -> None:
    # The reason for one-behind: a worker that finishes each part as soon as it gets it must
    # see completion on the last part, and only there.
    results = [batch.done(part) for _, part in batch.push_each(range(5))]
    assert results == [False, False, False, False, True]
    assert batch.finished()


def test_push_each_on_an_empty_iterable_closes_and_yields_nothing(batch: Batch) -> None:
    assert list(batch.push_each([])) == []
    assert batch.closed()
    assert batch.finished()
    assert batch.total() == 0
    assert batch.done("0") is False


def test_push_each_raises_already_closed_at_the_call(batch: Batch) -> None:
    batch.push_all(["a"])
    with pytest.raises(AlreadyClosed):
        batch.push_each(ITEMS)  # raises before anything is iterated
    assert batch.total() == 1
    assert set(batch.open_parts()) == {"a"}


def test_push_each_with_a_callback(batch: Batch) -> None:
    calls: list[tuple[str, str, bool]] = []
    result = batch.push_each(ITEMS, lambda item, part: calls.append((item, part, batch.closed())))
    assert result is None
    assert calls == [("item1", "0", False), ("item2", "1", False), ("item3", "2", True)]


def test_push_each_left_early_leaves_the_batch_open(batch: Batch) -> None:
    for _ in batch.push_each(ITEMS):
        break
    assert not batch.closed()
    assert set(batch.open_parts()) == {"0", "1"}


def test_push_each_sets_an_expiry_on_both_keys(env: Env, batch: Batch) -> None:
    for _, part in batch.push_each(ITEMS):
        env.assert_ttls(batch)
        assert part
    env.assert_ttls(batch)


# --- push_all -----------------------------------------------------------------------------------


def test_push_all_pushes_values_as_part_ids_and_closes(batch: Batch) -> None:
    batch.push_all([1, "b", 3])
    assert set(batch.open_parts()) == {"1", "b", "3"}
    assert batch.closed()
    assert (batch.count(), batch.total()) == (3, 3)


def test_push_all_counts_duplicates_once(batch: Batch) -> None:
    batch.push_all(["a", "b", "a", "a"])
    assert (batch.count(), batch.total()) == (2, 2)


def test_push_all_raises_already_closed(batch: Batch) -> None:
    batch.push_all(["a"])
    with pytest.raises(AlreadyClosed):
        batch.push_all(["b"])
    assert set(batch.open_parts()) == {"a"}
    assert batch.total() == 1


def test_push_all_sets_an_expiry_on_both_keys(env: Env, batch: Batch) -> None:
    batch.push_all(["a", "b"])
    env.assert_ttls(batch)


def test_push_all_of_many_parts(batch: Batch) -> None:
    batch.push_all(range(2_500))  # more than one pipeline chunk on Redis
    assert (batch.count(), batch.total()) == (2_500, 2_500)
    assert batch.open_part("2499")


def test_zero_part_batch_is_finished_but_no_done_is_ever_true(batch: Batch) -> None:
    batch.push_all([])
    assert batch.finished()
    assert (batch.count(), batch.total()) == (0, 0)
    assert batch.done("0") is False
    assert batch.done("anything") is False


# --- done ---------------------------------------------------------------------------------------


def test_done_decrements_count(batch: Batch) -> None:
    batch._push("part")
    batch.done("part")
    assert batch.count() == 0


def test_done_of_an_unknown_part_leaves_count_unchanged(batch: Batch) -> None:
    batch._push("part")
    assert batch.done("unknown") is False
    assert batch.count() == 1


def test_done_removes_the_part(batch: Batch) -> None:
    batch._push("part1")
    batch._push("part2")
    batch.done("part1")
    assert set(batch.open_parts()) == {"part2"}


def test_done_is_true_when_the_last_part_is_done_and_the_batch_is_closed(batch: Batch) -> None:
    batch._push("part")
    batch._close()
    assert batch.done("part") is True


def test_done_is_false_for_the_last_part_of_a_batch_not_closed(batch: Batch) -> None:
    batch._push("part")
    assert batch.done("part") is False
    batch._close()  # closing later does not make anyone see completion
    assert batch.finished()
    assert batch.done("part") is False


def test_done_is_false_when_parts_remain(batch: Batch) -> None:
    batch._push("part1")
    batch._push("part2")
    batch._close()
    assert batch.done("part1") is False


def test_done_is_false_when_nothing_was_pushed(batch: Batch) -> None:
    assert batch.done("part") is False


def test_done_twice_is_true_once(batch: Batch) -> None:
    batch.push_all(["a"])
    assert batch.done("a") is True
    assert batch.done("a") is False
    assert batch.done(0) is False


def test_done_accepts_int_part_ids(batch: Batch) -> None:
    for _ in batch.push_each(ITEMS):
        pass
    assert [batch.done(0), batch.done(1), batch.done(2)] == [False, False, True]


def test_done_sets_an_expiry_on_both_keys(env: Env, batch: Batch) -> None:
    batch._push("part1")
    batch._push("part2")
    batch.done("part1")
    env.assert_ttls(batch)


def test_finished_after_every_part_is_done(batch: Batch) -> None:
    batch.push_all(["a", "b"])
    assert not batch.finished()
    batch.done("a")
    assert not batch.finished()
    batch.done("b")
    assert batch.finished()
    assert (batch.count(), batch.total()) == (0, 2)


# --- open_part(s), total ------------------------------------------------------------------------


def test_open_part(batch: Batch) -> None:
    batch._push("part1")
    batch._push("part2")
    assert batch.open_part("part1")
    assert batch.open_part("part2")
    batch.done("part1")
    assert not batch.open_part("part1")
    assert batch.open_part("part2")
    assert not batch.open_part("never")


def test_open_parts(batch: Batch) -> None:
    batch._push("part1")
    batch._push("part2")
    assert set(batch.open_parts()) == {"part1", "part2"}
    batch.done("part1")
    assert set(batch.open_parts()) == {"part2"}


def test_total_counts_done_parts_too(batch: Batch) -> None:
    assert batch.total() == 0
    batch._push("part1")
    batch._push("part2")
    assert batch.total() == 2
    batch.done("part1")
    assert batch.total() == 2


# --- stop, close ----------------------------------------------------------------------------------


def test_stop_marks_the_batch_stopped(batch: Batch) -> None:
    assert batch.stopped() is False
    assert batch.stop() is True
    assert batch.stopped() is True


def test_stop_sets_an_expiry_on_both_keys(env: Env, batch: Batch) -> None:
    batch._push("part")
    batch.stop()
    env.assert_ttls(batch)


def test_stop_is_advisory(batch: Batch) -> None:
    batch._push("a")
    batch.stop()
    assert not batch.closed()
    batch._push("b")  # pushing still works
    batch._close()
    assert batch.done("a") is False  # and so does done
    assert batch.done("b") is True
    assert batch.stopped()


def test_close_marks_the_batch_closed(batch: Batch) -> None:
    assert batch.closed() is False
    batch._close()
    assert batch.closed() is True


def test_close_sets_an_expiry_on_both_keys(env: Env, batch: Batch) -> None:
    batch._push("part")
    batch._close()
    env.assert_ttls(batch)


# --- token, ttl, namespace, sharing ---------------------------------------------------------------


def test_default_token_is_a_random_uuid4_hex(env: Env) -> None:
    a, b = env.make(), env.make()
    assert re.fullmatch(r"[0-9a-f]{32}", a.token)
    assert a.token != b.token


def test_default_ttl_is_one_day(env: Env) -> None:
    batch = open_batch(namespace=env.namespace, redis_url=env.url)
    assert batch.ttl == DEFAULT_TTL == 86_400
    batch.push_all(["a"])
    parts, state = env.ttls(batch)
    assert 86_400 - 60 < parts <= 86_400
    assert 86_400 - 60 < state <= 86_400


def test_ttl_override_is_passed_through(env: Env) -> None:
    batch = env.make(ttl=50)
    assert batch.ttl == 50
    batch.push_all(["a"])
    env.assert_ttls(batch, 50)


def test_same_token_shares_one_batch(env: Env) -> None:
    producer = env.make()
    producer.push_all(["a", "b"])
    worker = env.make(producer.token)
    assert worker.total() == 2
    assert worker.done("a") is False
    assert env.make(producer.token).done("b") is True
    assert producer.finished()


def test_namespaces_separate_batches(env: Env) -> None:
    token = uuid.uuid4().hex
    env.make(token).push_all(["a"])
    assert env.make(token, namespace=f"{env.namespace}-other").total() == 0
    assert env.make(token, namespace=None).total() == 0
    assert env.make(token).total() == 1


def test_key_layout(env: Env) -> None:
    assert env.make("tok", namespace="ns").key == "ns:distributed_jobs:tok"
    assert env.make("tok", namespace=None).key == "distributed_jobs:tok"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": -1}, ValueError),
        ({"ttl": 1.5}, TypeError),
        ({"ttl": True}, TypeError),
        ({"token": ""}, ValueError),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        open_batch(**kwargs)


def test_storage_kind(env: Env, batch: Batch) -> None:
    assert batch.storage == env.kind
    assert env.kind in repr(batch)


# --- expiry -------------------------------------------------------------------------------------


def _assert_never_existed(batch: Batch) -> None:
    assert batch.total() == 0
    assert batch.count() == 0
    assert batch.finished() is False
    assert batch.closed() is False
    assert batch.stopped() is False
    assert list(batch.open_parts()) == []
    assert batch.remaining_ttl("parts") is None
    assert batch.remaining_ttl("state") is None


def test_memory_batch_expires_after_ttl_without_writes() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    batch = Batch(ttl=10, store=store)
    batch.push_all(["a", "b"])
    batch.stop()
    now[0] += 9
    batch.done("a")  # a write refreshes both TTLs
    assert batch.remaining_ttl("parts") == pytest.approx(10)
    now[0] += 9.5
    assert batch.total() == 2  # reads don't refresh, but 9.5 < 10
    now[0] += 0.5
    _assert_never_existed(batch)
    assert batch.done("b") is False


def test_memory_store_sweeps_expired_batches() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    Batch("old", ttl=1, store=store).push_all(["a"])
    now[0] += 2
    live = Batch("live", ttl=100, store=store)
    for i in range(MemoryStore._SWEEP_EVERY):
        live._push(i)
    assert not any("old" in key for key in store._deadlines)
    assert not any("old" in key for key in [*store._sets, *store._hashes])


def test_redis_batch_expires_after_ttl_without_writes(
    redis_url: str, raw: redis.Redis[str]
) -> None:
    batch = open_batch(ttl=1, namespace=f"test-{uuid.uuid4().hex[:12]}", redis_url=redis_url)
    batch.push_all(["a", "b"])
    batch.stop()
    wait_until(
        lambda: not raw.exists(f"{batch.key}:parts", f"{batch.key}:state"), 5, "keys to expire"
    )
    _assert_never_existed(batch)


# --- Redis layout, interoperability with the Ruby gem, errors ----------------------------------


@pytest.fixture
def rbatch(redis_url: str) -> Batch:
    return open_batch(ttl=TTL, namespace=f"test-{uuid.uuid4().hex[:12]}", redis_url=redis_url)


def test_redis_namespace_prefix_applied_and_plain_keys_absent(
    redis_url: str, raw: redis.Redis[str]
) -> None:
    batch = open_batch(namespace="some_namespace", redis_url=redis_url)
    for _ in batch.push_each(ITEMS):
        pass
    assert raw.exists(f"some_namespace:distributed_jobs:{batch.token}:state") == 1
    assert raw.exists(f"some_namespace:distributed_jobs:{batch.token}:parts") == 1
    assert raw.exists(f"distributed_jobs:{batch.token}:state") == 0
    assert raw.exists(f"distributed_jobs:{batch.token}:parts") == 0


def test_redis_key_layout_is_the_gems(rbatch: Batch, raw: redis.Redis[str]) -> None:
    for _ in rbatch.push_each(["x", "y", "y"]):
        pass
    rbatch.stop()
    parts, state = f"{rbatch.key}:parts", f"{rbatch.key}:state"
    client: Any = raw
    assert client.type(parts) == "set"
    assert client.type(state) == "hash"
    assert raw.smembers(parts) == {"0", "1", "2"}
    assert raw.hgetall(state) == {"total": "3", "closed": "1", "stopped": "1"}


def test_redis_reads_a_batch_written_by_the_ruby_gem(rbatch: Batch, raw: redis.Redis[str]) -> None:
    parts, state = f"{rbatch.key}:parts", f"{rbatch.key}:state"
    raw.sadd(parts, "0", "1")
    raw.hset(state, mapping={"total": 2, "closed": 1})
    assert (rbatch.count(), rbatch.total(), rbatch.closed()) == (2, 2, True)
    assert rbatch.done("0") is False
    assert rbatch.done("1") is True
    assert rbatch.finished()


def test_redis_remaining_ttl_agrees_with_the_ttl_command(
    rbatch: Batch, raw: redis.Redis[str]
) -> None:
    assert rbatch.remaining_ttl() is None
    rbatch._push("a")
    left = rbatch.remaining_ttl("parts")
    assert left is not None
    assert abs(left - float(raw.ttl(f"{rbatch.key}:parts"))) <= 1
    raw.persist(f"{rbatch.key}:state")
    assert rbatch.remaining_ttl("state") == float("inf")


def test_redis_scripts_survive_a_script_flush(rbatch: Batch, raw: redis.Redis[str]) -> None:
    rbatch._push("a")
    raw.script_flush()
    rbatch.push_all(["b", "c"])
    raw.script_flush()
    assert rbatch.done("a") is False
    assert rbatch.total() == 3


def test_redis_client_without_decoded_responses(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)  # replies are bytes
    try:
        batch = Batch(ttl=TTL, namespace=f"test-{uuid.uuid4().hex[:12]}", redis_client=client)
        batch.push_all(["a", "b"])
        batch.stop()
        assert set(batch.open_parts()) == {"a", "b"}
        assert (batch.total(), batch.closed(), batch.stopped()) == (2, True, True)
        assert batch.done("a") is False
        assert batch.done("b") is True
        assert batch.finished()
    finally:
        client.close()


def test_redis_unreachable_is_storage_unavailable() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0?socket_connect_timeout=1"
    try:
        batch = open_batch(redis_url=url)
        for call in (batch.total, batch.closed, lambda: batch.done("a"), batch.stop):
            with pytest.raises(StorageUnavailable) as info:
                call()
            assert isinstance(info.value.__cause__, redis.ConnectionError)
        with pytest.raises(StorageUnavailable):
            batch.push_all(["a"])
        with pytest.raises(StorageUnavailable):
            list(batch.open_parts())
    finally:
        close_redis_clients()


def test_redis_other_errors_are_storage_error(rbatch: Batch, raw: redis.Redis[str]) -> None:
    raw.set(f"{rbatch.key}:parts", "not a set")
    calls: list[Callable[[], object]] = [
        rbatch.count,
        lambda: rbatch.done("a"),
        lambda: rbatch._push("a"),
        lambda: list(rbatch.open_parts()),
        lambda: rbatch.open_part("a"),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, StorageUnavailable)
        assert isinstance(info.value.__cause__, redis.RedisError)


# --- races --------------------------------------------------------------------------------------


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            barrier.wait()
            target(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


def test_eight_threads_finishing_a_thousand_parts_see_completion_once(env: Env) -> None:
    batch = env.make()
    batch.push_all(range(1_000))
    trues: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        mine = env.make(batch.token)  # each worker builds its own, as a job would
        for part in range(k, 1_000, 8):
            if mine.done(part):
                with lock:
                    trues.append(str(part))

    _run_threads(8, worker)
    assert len(trues) == 1
    assert batch.finished()
    assert (batch.count(), batch.total()) == (0, 1_000)


def test_every_thread_finishing_every_part_sees_completion_once(env: Env) -> None:
    batch = env.make()
    batch.push_all(range(200))
    results: list[bool] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        order = list(range(200)) if k % 2 else list(range(199, -1, -1))
        mine = [batch.done(part) for part in order]
        with lock:
            results.extend(mine)

    _run_threads(8, worker)
    assert results.count(True) == 1
    assert len(results) == 8 * 200


def test_workers_fed_by_push_each_see_completion_once_after_the_last_part(env: Env) -> None:
    batch = env.make()
    work: queue.Queue[str | None] = queue.Queue()
    trues: list[str] = []
    lock = threading.Lock()
    handed_out: list[str] = []

    def worker(_: int) -> None:
        while (part := work.get()) is not None:
            if batch.done(part):
                with lock:
                    trues.append(part)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for _, part in batch.push_each(range(300)):
        handed_out.append(part)
        work.put(part)
    for _ in threads:
        work.put(None)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(handed_out) == 300
    assert len(trues) == 1
    assert batch.finished()


def test_on_a_cluster_a_batch_has_one_slot_and_batches_spread(redis_cluster: Any) -> None:
    """The gem's two keys would sit in two slots (its scripts would fail with CROSSSLOT): on a
    cluster both carry the batch's tag, so one batch is one slot and batches spread out."""
    try:
        batches = [open_batch(redis_url=redis_cluster.url) for _ in range(12)]
        for batch in batches:
            batch.push_all(["a", "b"])
            assert batch.done("a") is False
            assert batch.done("b") is True
        client: Any = open_sync(redis_cluster.url, "test", {"decode_responses": True})
        try:
            slots = set()
            for batch in batches:
                _, parts, state = batch_keys(None, batch.token, cluster=True)
                assert parts == f"{{distributed_jobs:{batch.token}}}:parts"
                assert client.keyslot(parts) == client.keyslot(state)
                assert client.exists(state) == 1
                slots.add(client.keyslot(state))
            assert len(slots) > 1
        finally:
            client.close()
    finally:
        close_redis_clients()
