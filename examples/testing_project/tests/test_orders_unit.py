"""Unit tests in eager mode: `JR.enqueue` runs the job and its feedbacks before it returns."""

from __future__ import annotations

import pytest
from shop.orders import place_order, start_cleanup, status_of

from jobreactor import JobFailed
from jobreactor.testing import EagerMode


def test_a_paid_order_gets_its_receipt(jobreactor_eager: EagerMode) -> None:
    handle = place_order("o1", "ann@example.com", 1200)
    assert handle is not None
    assert handle.done()  # already: eager
    assert handle.result()["receipt"] == "receipt for o1 sent to ann@example.com"
    assert status_of("o1") == "paid (ch_o1)"


def test_a_flaky_gateway_is_retried_without_waiting(jobreactor_eager: EagerMode) -> None:
    handle = place_order("o2", "bob@flaky.example", 500)
    assert handle is not None
    args = handle.result()
    assert args["tries"] == 1  # one failed attempt, its errback, then success
    assert args["error"]["message"] == "gateway timeout"  # the last failure stays in args
    assert status_of("o2") == "paid (ch_o2)"
    (outcome,) = jobreactor_eager.outcomes.all("charge_card")
    assert (outcome.outcome, outcome.final) == ("success", True)


@pytest.mark.jobreactor(config={"max_attempt": 3, "retry_multiplier": 5})
def test_a_declined_card_fails_after_its_attempts(jobreactor_eager: EagerMode) -> None:
    handle = place_order("o3", "eve@declined.example", 500)
    assert handle is not None
    with pytest.raises(JobFailed) as failed:
        handle.result()
    assert failed.value.args_dict["tries"] == 3
    assert status_of("o3") == "failed after 3 tries: card declined"
    record = jobreactor_eager.record(handle.id)  # failed jobs are kept (remove_failed_jobs)
    assert record is not None
    assert record.status == "failed"
    assert record.make_after == 10  # the last retry waited 2 x 5 s: skipped here


def test_nothing_to_charge_cancels_the_job(jobreactor_eager: EagerMode) -> None:
    handle = place_order("o4", "ann@example.com", 0)
    assert handle is not None
    assert "charge_id" not in handle.result()
    assert status_of("o4") == "nothing to charge"


@pytest.mark.jobreactor(periodic_runs=2)
def test_periodic_cleanup_runs_as_often_as_asked(jobreactor_eager: EagerMode) -> None:
    handle = start_cleanup(3600)
    assert handle is not None
    assert [o.args["runs"] for o in jobreactor_eager.outcomes.all("cleanup")] == [1, 2]
    assert jobreactor_eager.scheduled() == [handle.id]  # resting until its next run
    jobreactor_eager.run_scheduled(runs=5)  # the 4th run cancels it
    finals = [o.final for o in jobreactor_eager.outcomes.all("cleanup")]
    assert finals == [False, False, False, True]
    assert handle.result()["runs"] == 3  # CancelJob: the args the run was given
    assert jobreactor_eager.scheduled() == []
