"""The dispatch policy, pure: pending queue order, credits and node choice (SPEC 1.5.2, D11)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobreactor.distributor.dispatch import Dispatcher
from jobreactor.job import JobRecord

A, B, C = 1, 2, 3  # node (connection) keys


def job(
    job_id: str,
    name: str = "echo",
    *,
    priority: int = 0,
    node: str | None = None,
    not_node: str | None = None,
) -> JobRecord:
    return JobRecord(job_id, name, {}, priority=priority, node=node, not_node=not_node)


def sent(dispatcher: Dispatcher) -> list[tuple[int, str]]:
    """assign() as (node key, job id) pairs."""
    return [(key, record.id) for key, record, _ in dispatcher.assign()]


def ids(dispatcher: Dispatcher) -> list[str]:
    return [record.id for _, record, _ in dispatcher.assign()]


def credits_of(dispatcher: Dispatcher) -> dict[str, int]:
    return {slot.name: slot.credits for slot in dispatcher.nodes}


# --- order ---------------------------------------------------------------------------------------


def test_nothing_to_assign_without_jobs_or_nodes() -> None:
    dispatcher = Dispatcher()
    assert dispatcher.assign() == []
    dispatcher.add(job("j1"))
    assert dispatcher.assign() == []  # no node yet: the job waits
    assert len(dispatcher) == 1
    assert "j1" in dispatcher


def test_a_job_waiting_for_a_node_goes_out_when_one_connects() -> None:
    dispatcher = Dispatcher()
    dispatcher.add(job("j1"))
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    assert sent(dispatcher) == [(A, "j1")]
    assert len(dispatcher) == 0
    assert "j1" not in dispatcher


def test_fifo_within_one_priority() -> None:
    dispatcher = Dispatcher()
    for i in range(20):
        dispatcher.add(job(f"j{i}"))
    dispatcher.add_node(A, "w1", ["echo"], credits=100)
    assert ids(dispatcher) == [f"j{i}" for i in range(20)]


def test_priority_first_lower_number_first_then_fifo() -> None:
    # SPEC D11 (delayed_job >= 2.0): lower priority number first, then FIFO.
    dispatcher = Dispatcher()
    dispatcher.add(job("a5", priority=5))
    dispatcher.add(job("b0", priority=0))
    dispatcher.add(job("c5", priority=5))
    dispatcher.add(job("d0", priority=0))
    dispatcher.add(job("e-1", priority=-1))
    dispatcher.add(job("f10", priority=10))
    dispatcher.add_node(A, "w1", ["echo"], credits=10)
    assert ids(dispatcher) == ["e-1", "b0", "d0", "a5", "c5", "f10"]


def test_order_holds_across_job_names_and_routing_options() -> None:
    # Jobs with different names / node options sit in different internal queues.
    dispatcher = Dispatcher()
    dispatcher.add(job("1", "x", priority=1))
    dispatcher.add(job("2", "y", priority=0, node="w1"))
    dispatcher.add(job("3", "z", priority=1, not_node="w9"))
    dispatcher.add(job("4", "x", priority=0))
    dispatcher.add(job("5", "y", priority=1))
    dispatcher.add(job("6", "z", priority=0, node="w1", not_node="w9"))
    dispatcher.add_node(A, "w1", ["x", "y", "z"], credits=10)
    assert ids(dispatcher) == ["2", "4", "6", "1", "3", "5"]


def test_order_is_kept_when_credits_trickle_in_one_at_a_time() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=0)
    for i, priority in enumerate([3, 1, 2, 1, 0, 3]):
        dispatcher.add(job(f"j{i}", priority=priority))
    out: list[str] = []
    for _ in range(6):
        assert dispatcher.assign() == []
        dispatcher.grant(A, 1)
        out.extend(ids(dispatcher))
    assert out == ["j4", "j1", "j3", "j2", "j0", "j5"]


def test_assign_returns_the_seq_of_each_job() -> None:
    dispatcher = Dispatcher()
    dispatcher.add(job("j1"), seq=41)
    dispatcher.add(job("j2"), seq=42)
    dispatcher.add_node(A, "w1", ["echo"], credits=2)
    assert [(r.id, seq) for _, r, seq in dispatcher.assign()] == [("j1", 41), ("j2", 42)]


def test_seqs_from_next_seq_and_from_add_never_collide() -> None:
    dispatcher = Dispatcher()
    reserved = dispatcher.next_seq()
    dispatcher.add(job("j1"))
    dispatcher.add(job("j0"), seq=reserved)
    dispatcher.add_node(A, "w1", ["echo"], credits=2)
    out = dispatcher.assign()
    assert [r.id for _, r, _ in out] == ["j0", "j1"]
    assert len({seq for _, _, seq in out}) == 2


# --- credits -------------------------------------------------------------------------------------


def test_credits_are_consumed_and_no_job_goes_out_without_credit() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=2)
    for i in range(5):
        dispatcher.add(job(f"j{i}"))
    assert ids(dispatcher) == ["j0", "j1"]
    assert credits_of(dispatcher) == {"w1": 0}
    assert dispatcher.assign() == []
    assert len(dispatcher) == 3


def test_granted_credit_releases_waiting_jobs() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=0)
    for i in range(3):
        dispatcher.add(job(f"j{i}"))
    assert dispatcher.assign() == []
    dispatcher.grant(A, 2)
    assert ids(dispatcher) == ["j0", "j1"]
    dispatcher.set_credits(A, 5)
    assert ids(dispatcher) == ["j2"]
    assert credits_of(dispatcher) == {"w1": 4}


def test_credits_never_go_negative() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=-3)  # nonsense from a peer: treated as 0
    assert credits_of(dispatcher) == {"w1": 0}
    dispatcher.add(job("j1"))
    assert dispatcher.assign() == []
    dispatcher.set_credits(A, -1)
    assert dispatcher.assign() == []
    assert "j1" in dispatcher


def test_grant_and_set_credits_for_an_unknown_node_are_ignored() -> None:
    dispatcher = Dispatcher()
    dispatcher.grant(A, 5)
    dispatcher.set_credits(B, 5)
    assert dispatcher.nodes == []


def test_the_node_with_the_most_free_credit_is_preferred() -> None:
    # DESIGN: among eligible nodes the least loaded wins, not the first connected.
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=2)
    dispatcher.add_node(B, "w2", ["echo"], credits=5)
    dispatcher.add(job("j1"))
    assert sent(dispatcher) == [(B, "j1")]


def test_least_loaded_spreads_a_burst_and_uses_every_credit() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=3)
    dispatcher.add_node(B, "w2", ["echo"], credits=6)
    dispatcher.add_node(C, "w3", ["echo"], credits=1)
    for i in range(20):
        dispatcher.add(job(f"j{i}"))
    out = sent(dispatcher)
    assert [key for key, _ in out[:3]] == [B, B, B]  # until w2 is no longer the least loaded
    assert Counter(key for key, _ in out) == {A: 3, B: 6, C: 1}
    assert [job_id for _, job_id in out] == [f"j{i}" for i in range(10)]
    assert credits_of(dispatcher) == {"w1": 0, "w2": 0, "w3": 0}
    assert len(dispatcher) == 10


def test_at_each_step_the_chosen_node_had_the_most_credit() -> None:
    dispatcher = Dispatcher()
    start = {A: 4, B: 7, C: 2}
    for key, credit in start.items():
        dispatcher.add_node(key, f"w{key}", ["echo"], credit)
    for i in range(13):
        dispatcher.add(job(f"j{i}"))
    left = dict(start)
    for key, _ in sent(dispatcher):
        assert left[key] == max(left.values())
        left[key] -= 1
    assert left == {A: 0, B: 0, C: 0}


# --- job names -----------------------------------------------------------------------------------


def test_a_node_that_declared_the_job_name_is_preferred() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["resize"], credits=1)
    dispatcher.add_node(B, "w2", ["email"], credits=50)
    dispatcher.add(job("r1", "resize"))
    dispatcher.add(job("e1", "email"))
    assert sorted(sent(dispatcher)) == [(A, "r1"), (B, "e1")]


def test_a_job_waits_for_a_node_that_declared_its_name() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["resize"], credits=0)
    dispatcher.add_node(B, "w2", ["email"], credits=50)
    dispatcher.add(job("r1", "resize"))
    assert dispatcher.assign() == []  # w2 has credit but cannot run "resize"
    dispatcher.grant(A, 1)
    assert sent(dispatcher) == [(A, "r1")]


def test_if_no_connected_node_declared_the_name_any_node_may_take_it() -> None:
    # So an unknown name fails fast with NoSuchJob on a node (SPEC D13) instead of waiting.
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["resize"], credits=1)
    dispatcher.add_node(B, "w2", ["email"], credits=3)
    dispatcher.add(job("u1", "unknown"))
    assert sent(dispatcher) == [(B, "u1")]


def test_when_the_only_node_that_declared_a_name_leaves_others_may_take_it() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["resize"], credits=0)
    dispatcher.add_node(B, "w2", ["email"], credits=1)
    dispatcher.add(job("r1", "resize"))
    assert dispatcher.assign() == []
    dispatcher.remove_node(A)
    assert sent(dispatcher) == [(B, "r1")]


def test_a_node_that_connects_later_and_declares_the_name_gets_its_jobs() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["email"], credits=0)
    dispatcher.add(job("r1", "resize"))
    dispatcher.add_node(B, "w2", ["resize"], credits=1)
    assert sent(dispatcher) == [(B, "r1")]


def test_a_job_without_an_eligible_node_does_not_block_the_others() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["resize", "email"], credits=0)
    dispatcher.add_node(B, "w2", ["email"], credits=2)
    dispatcher.add(job("r1", "resize", priority=-5))  # first in line, but w1 has no credit
    dispatcher.add(job("e1", "email", priority=5))
    dispatcher.add(job("e2", "email", priority=5, not_node="w2"))  # only w1 can take it
    assert sent(dispatcher) == [(B, "e1")]
    assert len(dispatcher) == 2


# --- not_node ------------------------------------------------------------------------------------


def test_not_node_is_always_honoured() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=100)
    dispatcher.add(job("j1", not_node="w1"))
    assert dispatcher.assign() == []
    dispatcher.add_node(B, "w2", ["echo"], credits=1)
    assert sent(dispatcher) == [(B, "j1")]


def test_not_node_is_honoured_even_when_it_is_also_the_preferred_node() -> None:
    for strict in (False, True):
        dispatcher = Dispatcher(strict_node=strict)
        dispatcher.add_node(A, "w1", ["echo"], credits=5)
        dispatcher.add_node(B, "w2", ["echo"], credits=1)
        dispatcher.add(job("j1", node="w1", not_node="w1"))
        out = sent(dispatcher)
        assert (A, "j1") not in out
        assert out == ([] if strict else [(B, "j1")])


def test_not_node_applies_to_every_connection_with_that_name() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    dispatcher.add_node(B, "w1", ["echo"], credits=1)  # the same node, reconnected
    dispatcher.add(job("j1", not_node="w1"))
    assert dispatcher.assign() == []


def test_not_node_with_names_routing() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["resize"], credits=5)
    dispatcher.add_node(B, "w2", [], credits=5)
    dispatcher.add(job("r1", "resize", not_node="w1"))
    # w1 is the only node that declared "resize" and is excluded: the job waits for another.
    assert dispatcher.assign() == []
    dispatcher.add_node(C, "w3", ["resize"], credits=1)
    assert sent(dispatcher) == [(C, "r1")]


# --- node preference -----------------------------------------------------------------------------


def test_the_preferred_node_wins_over_a_less_loaded_one() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    dispatcher.add_node(B, "w2", ["echo"], credits=50)
    dispatcher.add(job("j1", node="w1"))
    assert sent(dispatcher) == [(A, "j1")]


def test_non_strict_preference_falls_back_when_the_preferred_node_has_no_credit() -> None:
    # SPEC 1.5.2: a locked preferred node => any other available node except not_node.
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=0)
    dispatcher.add_node(B, "w2", ["echo"], credits=1)
    dispatcher.add(job("j1", node="w1"))
    assert sent(dispatcher) == [(B, "j1")]


def test_non_strict_preference_falls_back_when_the_preferred_node_is_absent() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(B, "w2", ["echo"], credits=1)
    dispatcher.add(job("j1", node="w1"))
    assert sent(dispatcher) == [(B, "j1")]


def test_non_strict_fallback_still_honours_not_node() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=0)
    dispatcher.add_node(B, "w2", ["echo"], credits=9)
    dispatcher.add_node(C, "w3", ["echo"], credits=1)
    dispatcher.add(job("j1", node="w1", not_node="w2"))
    assert sent(dispatcher) == [(C, "j1")]


def test_strict_preference_waits_for_credit_on_the_named_node() -> None:
    dispatcher = Dispatcher(strict_node=True)
    dispatcher.add_node(A, "w1", ["echo"], credits=0)
    dispatcher.add_node(B, "w2", ["echo"], credits=10)
    dispatcher.add(job("j1", node="w1"))
    dispatcher.add(job("j2"))  # no preference: not held up by j1
    assert sent(dispatcher) == [(B, "j2")]
    assert "j1" in dispatcher
    dispatcher.grant(A, 1)
    assert sent(dispatcher) == [(A, "j1")]


def test_strict_preference_waits_for_an_absent_node_to_connect() -> None:
    dispatcher = Dispatcher(strict_node=True)
    dispatcher.add_node(B, "w2", ["echo"], credits=10)
    dispatcher.add(job("j1", node="w1"))
    assert dispatcher.assign() == []
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    assert sent(dispatcher) == [(A, "j1")]


def test_preference_among_connections_with_the_same_name_takes_the_freest() -> None:
    dispatcher = Dispatcher(strict_node=True)
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    dispatcher.add_node(B, "w1", ["echo"], credits=3)
    dispatcher.add(job("j1", node="w1"))
    assert sent(dispatcher) == [(B, "j1")]


# --- remove, requeue, nodes leaving --------------------------------------------------------------


def test_remove_takes_a_pending_job_out() -> None:
    dispatcher = Dispatcher()
    dispatcher.add(job("j1"), seq=7)
    dispatcher.add(job("j2"))
    removed = dispatcher.remove("j1")
    assert removed is not None
    record, seq = removed
    assert (record.id, seq) == ("j1", 7)
    assert "j1" not in dispatcher
    assert len(dispatcher) == 1
    assert dispatcher.remove("j1") is None
    assert dispatcher.remove("never-added") is None
    dispatcher.add_node(A, "w1", ["echo"], credits=5)
    assert ids(dispatcher) == ["j2"]
    assert credits_of(dispatcher) == {"w1": 4}


def test_removing_every_job_leaves_nothing_to_assign() -> None:
    dispatcher = Dispatcher()
    for i in range(5):
        dispatcher.add(job(f"j{i}", f"name{i}"))
    for i in range(5):
        assert dispatcher.remove(f"j{i}") is not None
    dispatcher.add_node(A, "w1", [], credits=5)
    assert dispatcher.assign() == []
    assert credits_of(dispatcher) == {"w1": 5}


def test_requeue_with_the_original_seq_keeps_the_fifo_place() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    for i in range(4):
        dispatcher.add(job(f"j{i}"))
    [(_, record, seq)] = dispatcher.assign()
    assert record.id == "j0"
    dispatcher.add(job("j4"))  # arrives while j0 is out
    dispatcher.add(record, seq=seq)  # j0 comes back (node gone before ack)
    dispatcher.grant(A, 10)
    assert ids(dispatcher) == ["j0", "j1", "j2", "j3", "j4"]


def test_requeue_keeps_priority_order_ahead_of_fifo() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=1)
    dispatcher.add(job("low", priority=5))
    [(_, record, seq)] = dispatcher.assign()
    dispatcher.add(job("urgent", priority=0))
    dispatcher.add(job("later", priority=5))
    dispatcher.add(record, seq=seq)
    dispatcher.grant(A, 3)
    assert ids(dispatcher) == ["urgent", "low", "later"]


def test_removed_then_requeued_job_goes_out_once() -> None:
    dispatcher = Dispatcher()
    dispatcher.add(job("j1"))
    dispatcher.add(job("j2"))
    removed = dispatcher.remove("j1")
    assert removed is not None
    dispatcher.add(removed[0], seq=removed[1])
    dispatcher.add_node(A, "w1", ["echo"], credits=5)
    assert ids(dispatcher) == ["j1", "j2"]
    assert credits_of(dispatcher) == {"w1": 3}


def test_adding_the_same_job_twice_keeps_one_copy() -> None:
    dispatcher = Dispatcher()
    dispatcher.add(job("j1", priority=5))
    dispatcher.add(job("j1", priority=0))  # the newer copy wins
    assert len(dispatcher) == 1
    dispatcher.add_node(A, "w1", ["echo"], credits=5)
    out = dispatcher.assign()
    assert [(r.id, r.priority) for _, r, _ in out] == [("j1", 0)]
    assert dispatcher.assign() == []


def test_remove_node_stops_assignments_to_it() -> None:
    dispatcher = Dispatcher()
    dispatcher.add_node(A, "w1", ["echo"], credits=10)
    dispatcher.add_node(B, "w2", ["echo"], credits=1)
    dispatcher.remove_node(A)
    assert [slot.key for slot in dispatcher.nodes] == [B]
    for i in range(3):
        dispatcher.add(job(f"j{i}"))
    assert sent(dispatcher) == [(B, "j0")]
    dispatcher.remove_node(B)
    dispatcher.remove_node(B)  # twice, or unknown: no error
    dispatcher.remove_node(99)
    assert dispatcher.nodes == []
    assert dispatcher.assign() == []
    assert len(dispatcher) == 2


def test_remove_node_keeps_other_connections_with_the_same_name() -> None:
    dispatcher = Dispatcher(strict_node=True)
    dispatcher.add_node(A, "w1", ["echo"], credits=0)
    dispatcher.add_node(B, "w1", ["echo"], credits=1)
    dispatcher.remove_node(A)
    dispatcher.add(job("j1", node="w1"))
    assert sent(dispatcher) == [(B, "j1")]


def test_drain_returns_every_pending_job_in_dispatch_order() -> None:
    dispatcher = Dispatcher()
    dispatcher.add(job("b", priority=1))
    dispatcher.add(job("a", "other", priority=0))
    dispatcher.add(job("c", priority=1))
    dispatcher.add(job("gone"))
    dispatcher.remove("gone")
    assert [r.id for r in dispatcher.drain()] == ["a", "b", "c"]
    assert len(dispatcher) == 0
    dispatcher.add_node(A, "w1", ["echo"], credits=5)
    assert dispatcher.assign() == []


def test_a_large_queue_drains_completely_in_order() -> None:
    dispatcher = Dispatcher()
    names = ["a", "b", "c", "d"]
    for i in range(2_000):
        dispatcher.add(job(f"j{i:04}", names[i % 4], priority=i % 3))
    dispatcher.add_node(A, "w1", names, credits=1_000)
    dispatcher.add_node(B, "w2", names, credits=1_000)
    out = dispatcher.assign()
    assert len(out) == 2_000
    order = [(r.priority, seq) for _, r, seq in out]
    assert order == sorted(order)
    assert len(dispatcher) == 0


# --- node choice among many nodes (heaps, not a scan) ----------------------------------------


def reference_choice(
    nodes: dict[int, tuple[str, frozenset[str], int]], record: JobRecord, strict: bool
) -> int | None:
    """The rules by brute force: the named node first, then the most credit among the nodes
    that declared the name (everyone if none did), the first connected on a tie; not_node never."""
    live = {key: n for key, n in nodes.items() if n[2] > 0 and n[0] != record.not_node}
    if record.node is not None and record.node != record.not_node:
        named = [key for key, n in live.items() if n[0] == record.node]
        if named:
            return max(named, key=lambda key: (live[key][2], -key))
    if record.node is not None and strict:
        return None
    declared = any(record.name in n[1] for n in nodes.values())
    eligible = [key for key, n in live.items() if not declared or record.name in n[1]]
    return max(eligible, key=lambda key: (live[key][2], -key)) if eligible else None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["grant", "job", "drop", "connect"]),
            st.integers(0, 30),
            st.integers(0, 5),
            st.sampled_from(["echo", "mail", "nobody-knows"]),
            st.booleans(),
        ),
        max_size=120,
    ),
    st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_choice_among_many_nodes_matches_the_rules(ops: list[Any], strict: bool) -> None:
    dispatcher = Dispatcher(strict_node=strict)
    model: dict[int, tuple[str, frozenset[str], int]] = {}
    declared = [frozenset({"echo"}), frozenset({"echo", "mail"}), frozenset({"mail"})]
    for key in range(31):
        names = declared[key % 3]
        model[key] = (f"n{key % 25}", names, key % 4)  # some names shared by two connections
        dispatcher.add_node(key, model[key][0], sorted(names), credits=key % 4)
    for step, (op, key, amount, name, pin) in enumerate(ops):
        if op == "grant" and key in model:
            dispatcher.grant(key, amount)
            model[key] = (*model[key][:2], model[key][2] + amount)
        elif op == "drop" and key in model:
            dispatcher.remove_node(key)
            del model[key]
        elif op == "connect" and key not in model:
            model[key] = (f"n{key}", declared[amount % 3], amount)
            dispatcher.add_node(key, f"n{key}", sorted(declared[amount % 3]), credits=amount)
        elif op == "job":
            record = job(
                f"j{step}", name, node=f"n{key}" if pin else None, not_node=f"n{amount * 5}"
            )
            expected = reference_choice(model, record, strict)
            dispatcher.add(record)
            out = dispatcher.assign()
            if expected is None:
                assert out == []
                dispatcher.remove(record.id)
            else:
                assert [(k, r.id) for k, r, _ in out] == [(expected, record.id)]
                model[expected] = (*model[expected][:2], model[expected][2] - 1)
