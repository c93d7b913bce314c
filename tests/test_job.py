"""Job records, enqueue option validation and timing rules: pure, with time passed in."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from typing import Any

import pytest

from jobreactor.errors import InvalidOptions
from jobreactor.job import (
    ENQUEUE_OPTIONS,
    FINISHED_STATUSES,
    JobRecord,
    JobStatus,
    build_record,
    canonical_json,
    due_time,
    error_text,
    error_value,
    next_periodic_due,
    retry_delay,
)
from jobreactor.protocol import Jobs, decode_body, encode

NOW = 1_700_000_000.0


def build(opts: dict[str, Any] | None = None, args: dict[str, Any] | None = None, **kw: Any):
    return build_record(
        kw.pop("job_id", "j1"),
        kw.pop("name", "echo"),
        {} if args is None else args,
        {} if opts is None else opts,
        now_epoch_s=kw.pop("now_epoch_s", NOW),
        **kw,
    )


# --- build_record: the plain record ----------------------------------------------------------


def test_minimal_record_has_the_spec_defaults() -> None:
    record = build(args={"a": 1}, distributor="127.0.0.1:5000")
    assert record.id == "j1"
    assert record.name == "echo"
    assert record.args == {"a": 1}
    assert record.attempt == 0
    assert record.status == JobStatus.NEW
    assert record.status == "new"
    assert record.make_after == 0
    assert record.run_at_ts == NOW
    assert record.period == 0
    assert record.defer is False
    assert record.node is None
    assert record.not_node is None
    assert record.distributor == "127.0.0.1:5000"
    assert record.priority == 0
    assert record.lock is None
    assert record.batch is None
    assert record.part is None
    assert not record.is_periodic
    assert not record.is_finished


def test_after_becomes_make_after_and_an_absolute_due_time() -> None:
    # SPEC 1.5.1: `after: 1` => make_after == 1; D9: plus an absolute run_at_ts.
    record = build({"after": 1})
    assert record.make_after == 1
    assert record.run_at_ts == NOW + 1


def test_sub_second_after_is_kept_as_a_float() -> None:
    # SPEC D17: sub-second delays are honoured, not truncated.
    record = build({"after": 0.25})
    assert record.make_after == 0.25
    assert record.run_at_ts == NOW + 0.25


def test_period_alone_keeps_make_after_zero() -> None:
    # SPEC 1.5.1 unit example: `period: 5` => period == 5 and make_after == 0.
    record = build({"period": 5})
    assert record.period == 5
    assert record.make_after == 0
    assert record.is_periodic


def test_make_after_and_run_at_ts_follow_now_epoch_s() -> None:
    first = build({"after": 10}, now_epoch_s=100.0)
    later = build({"after": 10}, now_epoch_s=250.5)
    assert (first.run_at_ts, first.make_after) == (110.0, 10.0)
    assert (later.run_at_ts, later.make_after) == (260.5, 10.0)


def test_defer_is_a_bool() -> None:
    assert build({"defer": True}).defer is True
    assert build({"defer": 1}).defer is True
    assert build({"defer": False}).defer is False


def test_none_options_mean_not_given() -> None:
    record = build({"after": None, "run_at": None, "node": None, "lock": None, "period": None})
    assert record.make_after == 0
    assert record.run_at_ts == NOW
    assert record.node is None
    assert record.lock is None
    assert record.period == 0


def test_every_documented_enqueue_option_is_accepted() -> None:
    # DESIGN "Public API": the enqueue options, all at once.
    opts = {
        "after": 1,
        "run_at": None,
        "period": 3,
        "defer": True,
        "node": "w1",
        "not_node": "w2",
        "priority": -3,
        "max_attempt": 2,
        "retry_strategy": "exponential",
        "max_run_time": 1.5,
        "enqueue_id": "e1",
        "perform_id": "p1",
        "duplicate_delay": 30,
        "lock": "my-lock",
        "lock_timeout": 60,
        "loner": True,
        "batch": "b1",
        "part": "part-1",
    }
    # Wave 3 (issue 21): a cron schedule sets every due time, so it goes alone (tests/test_cron.py).
    assert set(opts) | {"cron", "tz", "catch_up"} == ENQUEUE_OPTIONS
    record = build(opts)
    assert record.node == "w1"
    assert record.not_node == "w2"
    assert record.priority == -3
    assert record.max_attempt == 2
    assert record.retry_strategy == "exponential"
    assert record.max_run_time == 1.5
    assert record.enqueue_id == "e1"
    assert record.perform_id == "p1"
    assert record.duplicate_delay == 30
    assert record.lock == "my-lock"
    assert record.lock_timeout == 60
    assert record.loner is True
    assert (record.batch, record.part) == ("b1", "part-1")


# --- build_record: validation ----------------------------------------------------------------


def test_unknown_option_key_is_invalid_options_and_a_value_error() -> None:
    with pytest.raises(InvalidOptions, match="afterr") as info:
        build({"afterr": 5})
    assert isinstance(info.value, ValueError)


def test_several_unknown_keys_are_all_named() -> None:
    with pytest.raises(InvalidOptions, match="bogus") as info:
        build({"bogus": 1, "nope": 2, "after": 1})
    assert "nope" in str(info.value)


@pytest.mark.parametrize("after", [-1, -0.001, -(10**9)])
def test_negative_after_is_a_value_error(after: float) -> None:
    with pytest.raises(ValueError, match="after"):
        build({"after": after})


@pytest.mark.parametrize("after", ["5", True, [1], float("nan"), {"s": 1}])
def test_after_of_the_wrong_type_is_invalid(after: Any) -> None:
    with pytest.raises(InvalidOptions):
        build({"after": after})


@pytest.mark.parametrize("key", ["period", "duplicate_delay", "lock_timeout"])
@pytest.mark.parametrize("value", [-1, "10", False, float("nan")])
def test_other_second_options_are_checked_too(key: str, value: Any) -> None:
    with pytest.raises(InvalidOptions, match=key):
        build({key: value})


def test_node_equal_to_not_node_with_strict_node_is_refused() -> None:
    # SPEC D10: the Ruby distributor hangs forever on this.
    with pytest.raises(ValueError, match="w1"):
        build({"node": "w1", "not_node": "w1"}, strict_node=True)


def test_node_equal_to_not_node_without_strict_node_is_allowed() -> None:
    record = build({"node": "w1", "not_node": "w1"})
    assert (record.node, record.not_node) == ("w1", "w1")
    other = build({"node": "w1", "not_node": "w2"}, strict_node=True)
    assert (other.node, other.not_node) == ("w1", "w2")


@pytest.mark.parametrize("key", ["node", "not_node", "enqueue_id", "perform_id", "batch"])
@pytest.mark.parametrize("value", ["", 5, b"w1", ["w1"]])
def test_text_options_must_be_non_empty_strings(key: str, value: Any) -> None:
    opts: dict[str, Any] = {key: value}
    if key == "batch":
        opts["part"] = "p"
    with pytest.raises(InvalidOptions, match=key):
        build(opts)


@pytest.mark.parametrize("name", ["", None, 5])
def test_job_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(InvalidOptions):
        build(name=name)


def test_run_at_as_aware_datetime_overrides_after() -> None:
    when = dt.datetime.fromtimestamp(NOW + 42, tz=dt.UTC)
    record = build({"run_at": when, "after": 5})
    assert record.run_at_ts == NOW + 42
    assert record.make_after == 42


def test_run_at_as_datetime_in_another_zone_is_the_same_instant() -> None:
    zone = dt.timezone(dt.timedelta(hours=-5))
    when = dt.datetime.fromtimestamp(NOW + 7, tz=zone)
    assert build({"run_at": when}).run_at_ts == NOW + 7


def test_run_at_as_naive_datetime_is_local_time() -> None:
    naive = dt.datetime.fromtimestamp(NOW + 30)  # local wall-clock time, no tzinfo
    record = build({"run_at": naive})
    assert record.run_at_ts == pytest.approx(naive.timestamp())
    assert record.make_after == pytest.approx(30)


@pytest.mark.parametrize("ts", [NOW + 90, int(NOW) + 90])
def test_run_at_as_unix_timestamp_overrides_after(ts: float) -> None:
    record = build({"run_at": ts, "after": 5})
    assert record.run_at_ts == NOW + 90
    assert record.make_after == 90
    assert isinstance(record.run_at_ts, float)


def test_run_at_in_the_past_gives_a_negative_make_after() -> None:
    # SPEC 1.5.1: run_at - now, "float seconds, may be negative" (the node runs it at once).
    record = build({"run_at": NOW - 10})
    assert record.run_at_ts == NOW - 10
    assert record.make_after == -10


@pytest.mark.parametrize("run_at", ["2030-01-01", True, [NOW], dt.date(2030, 1, 1)])
def test_run_at_of_the_wrong_type_is_invalid(run_at: Any) -> None:
    with pytest.raises(InvalidOptions, match="run_at"):
        build({"run_at": run_at})


@pytest.mark.parametrize("run_at", [float("nan"), float("inf"), float("-inf")])
def test_run_at_must_be_a_finite_timestamp(run_at: float) -> None:
    # A NaN/inf due time poisons every heap and comparison it reaches.
    with pytest.raises(InvalidOptions, match="run_at"):
        build({"run_at": run_at})


def test_after_must_be_finite() -> None:
    with pytest.raises(InvalidOptions, match="after"):
        build({"after": float("inf")})


def test_due_time_directly() -> None:
    assert due_time({}, 10.0) == (10.0, 0.0)
    assert due_time({"after": 2.5}, 10.0) == (12.5, 2.5)
    assert due_time({"after": 2.5, "run_at": 20}, 10.0) == (20.0, 10.0)


def test_priority_defaults_to_default_priority_and_can_be_set() -> None:
    assert build().priority == 0
    assert build(default_priority=7).priority == 7
    assert build({"priority": -2}, default_priority=7).priority == -2
    assert build({"priority": 0}, default_priority=7).priority == 0


def test_priority_none_means_the_default() -> None:
    # Like every other option, None means "not given"; a None priority could not be ordered.
    assert build({"priority": None}, default_priority=3).priority == 3


@pytest.mark.parametrize("priority", [1.5, "1", True])
def test_priority_must_be_an_integer(priority: Any) -> None:
    with pytest.raises(InvalidOptions, match="priority"):
        build({"priority": priority})


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
def test_max_attempt_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(InvalidOptions, match="max_attempt"):
        build({"max_attempt": value})


def test_max_attempt_one_is_allowed() -> None:
    assert build({"max_attempt": 1}).max_attempt == 1


def test_retry_strategy_must_be_known() -> None:
    assert build({"retry_strategy": "linear"}).retry_strategy == "linear"
    with pytest.raises(InvalidOptions, match="retry_strategy"):
        build({"retry_strategy": "fibonacci"})


@pytest.mark.parametrize("value", [0, -1, "5"])
def test_max_run_time_must_be_positive(value: Any) -> None:
    with pytest.raises(InvalidOptions, match="max_run_time"):
        build({"max_run_time": value})


def test_lock_true_gives_the_canonical_key() -> None:
    record = build({"lock": True}, args={"b": [1, 2], "a": {"y": 1, "x": "é"}})
    assert record.lock == 'lock:echo:{"a":{"x":"\\u00e9","y":1},"b":[1,2]}'
    assert record.lock == "lock:echo:" + canonical_json(record.args)


def test_lock_key_does_not_depend_on_dict_key_order() -> None:
    one = build({"lock": True}, args={"a": 1, "b": {"c": 2, "d": 3}})
    two = build({"lock": True}, args={"b": {"d": 3, "c": 2}, "a": 1})
    assert one.lock == two.lock
    assert one.lock is not None
    assert one.lock.startswith("lock:echo:")


def test_lock_key_differs_per_name_and_args() -> None:
    base = build({"lock": True}, args={"a": 1}).lock
    assert build({"lock": True}, args={"a": 2}).lock != base
    assert build({"lock": True}, args={"a": 1}, name="other").lock != base


def test_lock_as_a_string_is_the_key_itself() -> None:
    assert build({"lock": "user:42"}, args={"a": 1}).lock == "user:42"


@pytest.mark.parametrize("lock", [False, None])
def test_lock_off(lock: Any) -> None:
    assert build({"lock": lock}).lock is None


@pytest.mark.parametrize("lock", ["", 1, ["k"]])
def test_lock_of_the_wrong_type_is_invalid(lock: Any) -> None:
    with pytest.raises(InvalidOptions, match="lock"):
        build({"lock": lock})


def test_batch_without_part_is_an_error() -> None:
    with pytest.raises(InvalidOptions, match="part"):
        build({"batch": "b1"})


def test_part_without_batch_is_an_error() -> None:
    with pytest.raises(InvalidOptions, match="batch"):
        build({"part": "p1"})


def test_batch_with_part_is_kept_and_part_becomes_text() -> None:
    record = build({"batch": "b1", "part": 3})
    assert (record.batch, record.part) == ("b1", "3")


def test_callers_args_and_opts_are_not_mutated() -> None:
    # SPEC 1.5.1 step 3: the Ruby code rewrites the caller's opts; we must not.
    args = {"b": {"nested": [1, 2]}, "a": 1}
    opts = {
        "run_at": dt.datetime.fromtimestamp(NOW + 5, tz=dt.UTC),
        "after": 3,
        "lock": True,
        "batch": "b",
        "part": 1,
        "priority": 2,
    }
    args_before, opts_before = copy.deepcopy(args), copy.deepcopy(opts)
    build(opts, args=args)
    assert args == args_before
    assert opts == opts_before
    assert list(args) == ["b", "a"]  # not even re-ordered


def test_callers_inputs_are_not_mutated_when_validation_fails() -> None:
    args = {"a": 1}
    opts = {"run_at": NOW, "batch": "b"}
    with pytest.raises(InvalidOptions):
        build(opts, args=args)
    assert opts == {"run_at": NOW, "batch": "b"}
    assert args == {"a": 1}


# --- the record: to_dict / from_dict --------------------------------------------------------


def full_record() -> JobRecord:
    return JobRecord(
        id="j1",
        name="echo",
        args={"a": 1, "nested": {"l": [1, None]}},
        attempt=3,
        status=JobStatus.ERROR,
        run_at_ts=NOW + 5,
        make_after=5.0,
        period=10.0,
        defer=True,
        node="w1",
        not_node="w2",
        distributor="127.0.0.1:5000",
        priority=4,
        max_attempt=7,
        retry_strategy="exponential",
        max_run_time=2.5,
        on_success="s1",
        on_error="e1",
        run_at=NOW - 1,
        failed_at=NOW,
        last_error="ValueError: boom",
        enqueue_id="eq",
        perform_id="pf",
        duplicate_delay=30.0,
        lock="lock:echo:{}",
        lock_timeout=60.0,
        loner=True,
        batch="b",
        part="p",
    )


def test_to_dict_has_only_id_name_args_and_non_defaults() -> None:
    record = JobRecord("j1", "echo", {"a": 1})
    assert record.to_dict() == {"id": "j1", "name": "echo", "args": {"a": 1}}
    record.attempt = 2
    record.node = "w1"
    assert record.to_dict() == {
        "id": "j1",
        "name": "echo",
        "args": {"a": 1},
        "attempt": 2,
        "node": "w1",
    }


def test_to_dict_from_dict_round_trip() -> None:
    record = full_record()
    data = record.to_dict()
    assert JobRecord.from_dict(data) == record
    assert JobRecord.from_dict(JobRecord("j", "n", {}).to_dict()) == JobRecord("j", "n", {})


def test_built_record_round_trips() -> None:
    record = build({"after": 2, "lock": True, "node": "w1"}, args={"x": [1]})
    assert JobRecord.from_dict(record.to_dict()) == record


def test_to_dict_is_json_and_wire_safe() -> None:
    record = full_record()
    data = record.to_dict()
    assert JobRecord.from_dict(json.loads(json.dumps(data))) == record
    [decoded] = decode_body(encode(Jobs([(1, data)]))[4:]).jobs  # type: ignore[attr-defined]
    assert JobRecord.from_dict(decoded[1]) == record


def test_from_dict_keeps_unknown_keys_in_extra() -> None:
    data = {**JobRecord("j1", "echo", {}).to_dict(), "from_the_future": [1, 2], "extra": 5}
    record = JobRecord.from_dict(data)
    assert record.extra == {"from_the_future": [1, 2], "extra": 5}
    assert not hasattr(record, "from_the_future")
    assert record.id == "j1"


def test_from_dict_does_not_share_the_input_dict() -> None:
    data = {"id": "j1", "name": "echo", "args": {"a": 1}, "unknown": 1}
    record = JobRecord.from_dict(data)
    assert record.extra is not None
    record.extra["more"] = 2
    record.attempt = 5
    assert data == {"id": "j1", "name": "echo", "args": {"a": 1}, "unknown": 1}


def test_copy_is_equal_and_has_its_own_args() -> None:
    record = full_record()
    clone = record.copy()
    assert clone == record
    clone.args["new"] = 1
    clone.attempt += 1
    assert "new" not in record.args
    assert record.attempt == 3


def test_status_values_and_finished_statuses() -> None:
    assert [s.value for s in JobStatus] == [
        "new",
        "in progress",
        "queued",
        "error",
        "complete",
        "failed",
        "cancelled",
    ]
    assert {"complete", "failed", "cancelled"} == FINISHED_STATUSES
    for status in JobStatus:
        record = JobRecord("j", "n", {}, status=status)
        assert record.is_finished == (status in FINISHED_STATUSES)
    # A status read back from storage as a plain string still counts.
    assert JobRecord("j", "n", {}, status="failed").is_finished


# --- retry_delay -------------------------------------------------------------------------------


def test_linear_retry_delay_is_attempt_times_multiplier() -> None:
    # SPEC 1.6.7: 5, 10, 15, ... 45 s with the defaults.
    assert [retry_delay(a, "linear", 5) for a in (1, 2, 3)] == [5, 10, 15]
    assert [retry_delay(a, "linear", 5) for a in range(1, 10)] == [5 * a for a in range(1, 10)]
    assert sum(retry_delay(a, "linear", 5) for a in range(1, 10)) == 225  # 9 retries, 225 s


def test_linear_retry_delay_with_other_multipliers() -> None:
    assert retry_delay(1, "linear", 0) == 0  # the ORIG integration tests use 0
    assert retry_delay(3, "linear", 0.5) == 1.5
    assert retry_delay(4, "linear", 2) == 8


def test_exponential_retry_delay_is_attempt_to_the_fourth_plus_five() -> None:
    # SPEC 2.5 (collectiveidea, attempts after increment): 6, 21, 86 ...
    assert [retry_delay(a, "exponential", 5) for a in (1, 2, 3, 4)] == [6, 21, 86, 261]
    assert retry_delay(2, "exponential", 0) == 21  # the multiplier does not apply


# --- next_periodic_due ---------------------------------------------------------------------------


def test_periodic_due_is_previous_due_plus_period() -> None:
    assert next_periodic_due(100.0, 10.0, now=100.0) == 110.0
    assert next_periodic_due(100.0, 10.0, now=103.7) == 110.0  # a run that took 3.7 s
    assert next_periodic_due(100.0, 10.0, now=109.999) == 110.0


def test_periodic_due_does_not_drift() -> None:
    due = 1000.0
    dues = []
    for _ in range(50):
        due = next_periodic_due(due, 2.5, now=due + 0.4)  # each run takes 0.4 s
        dues.append(due)
    assert dues == [1000.0 + 2.5 * k for k in range(1, 51)]


def test_missed_periodic_runs_are_skipped_onto_the_grid() -> None:
    assert next_periodic_due(100.0, 10.0, now=125.0) == 130.0  # 110 and 120 were missed
    assert next_periodic_due(100.0, 10.0, now=1_000.5) == 1_010.0
    for now in (111.0, 155.5, 999.0):
        due = next_periodic_due(100.0, 10.0, now=now)
        assert due >= now
        assert due - now <= 10.0
        assert math.isclose((due - 100.0) % 10.0, 0.0, abs_tol=1e-9)


def test_periodic_due_when_the_clock_is_behind() -> None:
    assert next_periodic_due(100.0, 10.0, now=50.0) == 110.0


# --- errors as data ------------------------------------------------------------------------------


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_value_is_plain_data() -> None:
    value = error_value(raised(ValueError("boom")))
    assert value["class"] == "ValueError"
    assert value["message"] == "boom"
    assert "ValueError: boom" in value["traceback"]
    assert "raised" in value["traceback"]  # the frame that raised it
    json.dumps(value)


def test_error_value_of_an_exception_that_was_never_raised() -> None:
    value = error_value(KeyError("k"))
    assert value["class"] == "KeyError"
    assert value["message"] == "'k'"


def test_error_value_traceback_is_bounded() -> None:
    value = error_value(raised(RuntimeError("x" * 100_000)))
    assert len(value["traceback"]) <= 4000
    assert value["message"] == "x" * 100_000


def test_error_value_of_a_custom_exception_uses_its_class_name() -> None:
    class MyJobError(Exception):
        pass

    assert error_value(raised(MyJobError("bad")))["class"] == "MyJobError"


def test_error_text_is_class_colon_message() -> None:
    assert error_text(ValueError("boom")) == "ValueError: boom"
    assert error_text(NameError("name 'x' is not defined")) == (
        "NameError: name 'x' is not defined"
    )
    assert error_text(RuntimeError()) == "RuntimeError: "


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": None}]}) == (
        '{"a":[1,{"c":null,"d":2}],"b":1}'
    )
