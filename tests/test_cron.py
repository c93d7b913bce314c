"""Cron schedules (issue 21): the rules with a clock passed in, then real reactors and nodes."""

from __future__ import annotations

import datetime as dt
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jobreactor import InvalidOptions, JobCancelled, Registry
from jobreactor.cron import MISSED_TICK_GRACE_S, CronSchedule, settle_missed
from jobreactor.job import build_record, next_due
from tests.conftest import Recorder, make_test_reactor, wait_until
from tests.redis_server import RedisServer, unique_prefix

BERLIN = ZoneInfo("Europe/Berlin")


def at(year: int, month: int, day: int, hour: int, minute: int) -> float:
    """Berlin wall-clock time as a unix timestamp."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=BERLIN).timestamp()


def ticks(schedule: CronSchedule, start: float, n: int) -> list[str]:
    out, now = [], start
    for _ in range(n):
        now = schedule.next_after(now)
        out.append(dt.datetime.fromtimestamp(now, BERLIN).strftime("%m-%d %H:%M:%S%z"))
    return out


# --- the rules, with a clock passed in ---------------------------------------------------------


def test_six_fields_lead_with_seconds() -> None:
    schedule = CronSchedule.parse("*/15 * * * * *")
    assert schedule.next_after(1000.0) == 1005.0  # 1005 is 00:16:45 UTC: a multiple of 15 s
    assert schedule.next_after(1005.0) == 1020.0
    assert CronSchedule.parse("0 12 * * *").next_after(0.0) == 12 * 3600.0


def test_a_skipped_local_time_does_not_run() -> None:
    # 2026-03-29 in Berlin: clocks jump from 02:00 to 03:00, so 02:30 never happens that day.
    schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert ticks(schedule, at(2026, 3, 28, 3, 0), 2) == [
        "03-30 02:30:00+0200",  # not 03-29 03:00, where Debian cron would run it
        "03-31 02:30:00+0200",
    ]
    with_seconds = CronSchedule.parse("0 30 2 * * *", "Europe/Berlin")
    assert ticks(with_seconds, at(2026, 3, 28, 3, 0), 1) == ["03-30 02:30:00+0200"]


def test_a_repeated_local_time_runs_once() -> None:
    # 2026-10-25 in Berlin: clocks go back from 03:00 to 02:00, so 02:30 happens twice.
    schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert ticks(schedule, at(2026, 10, 24, 3, 0), 2) == [
        "10-25 02:30:00+0200",
        "10-26 02:30:00+0100",
    ]
    with_seconds = CronSchedule.parse("0 */20 2 * * *", "Europe/Berlin")
    assert ticks(with_seconds, at(2026, 10, 25, 1, 59), 4) == [
        "10-25 02:00:00+0200",
        "10-25 02:20:00+0200",
        "10-25 02:40:00+0200",
        "10-26 02:00:00+0100",  # the repeated 02:xx hour (+01:00) runs nothing again
    ]


def test_a_schedule_without_named_hours_keeps_its_interval_through_the_change() -> None:
    schedule = CronSchedule.parse("*/30 * * * *", "Europe/Berlin")
    assert ticks(schedule, at(2026, 10, 25, 1, 50), 5) == [
        "10-25 02:00:00+0200",
        "10-25 02:30:00+0200",
        "10-25 02:00:00+0100",
        "10-25 02:30:00+0100",
        "10-25 03:00:00+0100",
    ]


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"cron": "* * *"}, "has 3 fields"),
        ({"cron": "61 * * * *"}, "is not valid"),
        ({"cron": 5}, "must be a cron expression"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"cron": "* * * * *", "period": 5}, "can't be combined with ['period']"),
        ({"cron": "* * * * *", "after": 5}, "can't be combined with ['after']"),
        ({"tz": "UTC"}, "need a 'cron' schedule"),
        ({"catch_up": True}, "need a 'cron' schedule"),
    ],
)
def test_bad_schedules_are_refused_at_enqueue(opts: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOptions) as caught:
        build_record("j", "n", {}, opts, now_epoch_s=0.0)
    assert message in str(caught.value)


def test_the_record_keeps_its_schedule_and_the_next_due_comes_from_it() -> None:
    record = build_record("j", "n", {}, {"cron": "0 * * * *", "tz": "UTC"}, now_epoch_s=10.0)
    assert (record.run_at_ts, record.cron, record.is_periodic) == (3600.0, "0 * * * *", True)
    assert record.to_dict()["cron"] == "0 * * * *"
    assert next_due(record, now_epoch_s=3600.5) == 7200.0
    assert next_due(record, now_epoch_s=9000.0) == 10800.0  # runs missed while busy: skipped


def test_a_missed_tick_is_skipped_unless_catch_up() -> None:
    late = MISSED_TICK_GRACE_S + 1
    assert settle_missed("0 * * * *", None, False, 3600.0, 3600.0 + late) == 7200.0
    assert settle_missed("0 * * * *", None, True, 3600.0, 3600.0 + late) == 3600.0 + late
    assert settle_missed("0 * * * *", None, False, 3600.0, 3600.5) == 3600.0  # late, not missed


# --- real reactors and nodes -------------------------------------------------------------------


def stamping_registry(runs: Recorder) -> Registry:
    registry = Registry()

    @registry.job("tick")
    def tick(args: dict[str, Any]) -> None:
        runs((time.time(), args["job_itself"]["run_at_ts"]))

    return registry


def test_cron_with_seconds_runs_on_the_boundaries_and_cancel_ends_it() -> None:
    reactor = make_test_reactor(merge_job_itself_to_args=True)
    try:
        reactor.start_distributor("127.0.0.1", 0)
        runs = Recorder()
        node = reactor.start_node("c1", "memory", registry=stamping_registry(runs))
        handle = reactor.enqueue("tick", {}, {"cron": "* * * * * *"}, success=Recorder())
        assert handle is not None
        seen = runs.wait(3, timeout=30)
        dues = [due for _, due in seen]
        assert all(due == math.floor(due) for due in dues)  # whole seconds: the boundaries
        assert dues == sorted(set(dues))  # each tick once, in order
        assert all(started >= due for started, due in seen)  # never before its tick
        assert reactor.cancel(handle.id) is True
        with pytest.raises(JobCancelled):
            handle.result(10)
        wait_until(lambda: node.held_count == 0, 10, "the node to drop the schedule")
        assert reactor.cancel(handle.id) is False
    finally:
        reactor.stop(timeout=15)


@pytest.mark.timeout(90)
def test_three_app_processes_declaring_one_schedule_run_it_once_per_tick(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix, out = unique_prefix(), tmp_path / "apps.jsonl"
    apps = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.cron_app", str(out), redis_server.url, prefix]
        )
        for _ in range(3)
    ]
    reactor = make_test_reactor(merge_job_itself_to_args=True)
    try:

        def lines() -> list[dict[str, Any]]:
            text = out.read_text() if out.exists() else ""
            return [json.loads(line) for line in text.splitlines()]

        wait_until(lambda: len(lines()) == 3, 30, "three app processes to declare the schedule")
        declared = lines()
        assert sum(line["scheduled"] is not None for line in declared) == 1
        runs = Recorder()
        reactor.start_node(
            "c3",
            "memory",
            [("127.0.0.1", line["port"]) for line in declared],
            registry=stamping_registry(runs),
        )
        dues = [due for _, due in runs.wait(4, timeout=30)]
        assert dues == sorted(set(dues))  # one run per tick, from one of three declarations
    finally:
        for app in apps:
            app.send_signal(signal.SIGTERM)
        for app in apps:
            app.wait(20)
        reactor.stop(timeout=15)


@pytest.mark.parametrize("catch_up", [False, True])
def test_a_schedule_held_by_a_redis_node_resumes_after_a_restart_skipping_missed_ticks(
    redis_server: RedisServer, catch_up: bool
) -> None:
    reactor = make_test_reactor(
        merge_job_itself_to_args=True, redis_prefix=unique_prefix(), node_grace=600.0
    )
    try:
        reactor.start_distributor("127.0.0.1", 0)
        runs = Recorder()
        registry = stamping_registry(runs)
        node = reactor.start_node("c2", "redis", redis_url=redis_server.url, registry=registry)
        opts = {"cron": "*/3 * * * * *", "catch_up": catch_up}
        handle = reactor.enqueue("tick", {}, opts, success=Recorder())
        assert handle is not None
        last_due = runs.wait(1, timeout=30)[-1][1]
        node.stop(grace=5)
        stopped_at = time.time()
        wait_until(lambda: time.time() > last_due + 3 + MISSED_TICK_GRACE_S + 0.5, 20, "a miss")
        reactor.start_node("c2", "redis", redis_url=redis_server.url, registry=registry)
        started, due = runs.wait(2, timeout=30)[1]
        assert due > stopped_at  # the ticks missed while it was down are not replayed...
        assert started >= due
        if catch_up:
            assert due % 3 != 0  # ...but with catch_up the last one runs once, at the restart
        else:
            assert due % 3 == 0  # ...they are skipped: the next run is the next tick
    finally:
        reactor.stop(timeout=15)
