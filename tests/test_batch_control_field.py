"""Control data stays out of job data (issue 20): "this part completed its batch" travels as a
field of the report (`ReportItem.completes_batch`), never as a key in the job's args."""

from __future__ import annotations

from typing import Any

from jobreactor import Reactor, Registry
from jobreactor.protocol import ReportItem, Reports, decode_body, encode
from tests.conftest import Recorder

OLD_KEY = "_jr_batch_complete"  # the args key that carried it before


def test_a_job_writing_the_old_batch_key_neither_completes_a_batch_nor_loses_the_key(
    reactor: Reactor,
) -> None:
    registry = Registry()
    registry.job("part")(lambda args: None)
    completed = Recorder()
    batch = reactor.batch(on_complete=completed)

    @registry.job("plain")
    def plain(args: dict[str, Any]) -> None:
        args[OLD_KEY] = batch.token  # job data that happens to look like the old signal

    reactor.start_node(
        "w1", "memory", [("127.0.0.1", reactor.distributor.address_port())], registry=registry
    )
    [(_, part)] = list(batch.push_each(["only"]))  # the batch is open, one part pending
    plain_handle = reactor.enqueue("plain", {"x": 1})
    assert plain_handle is not None
    result = plain_handle.result(20)
    assert result[OLD_KEY] == batch.token  # the job's args come back whole
    assert result["x"] == 1
    # on_complete runs (synchronously) before the handle of the report that completes it
    # settles: had the plain job completed the batch, it would have been called by now.
    assert len(completed) == 0
    part_handle = reactor.enqueue("part", {}, {"batch": batch.token, "part": part})
    assert part_handle is not None
    assert OLD_KEY not in part_handle.result(20)
    assert completed.wait(1) == [batch.token]  # the real last part completes it, once


def test_the_report_carries_the_batch_it_completed_as_a_field() -> None:
    item = ReportItem("j1", 3, "success", True, {OLD_KEY: "not a signal"}, completes_batch="b1")
    decoded = decode_body(encode(Reports(1, [item]))[4:])
    assert isinstance(decoded, Reports)
    assert decoded.items == [item]
    assert decoded.items[0].completes_batch == "b1"
    assert decoded.items[0].args == {OLD_KEY: "not a signal"}
    assert ReportItem("j2", 4, "success", True, {}).completes_batch == ""  # none by default
