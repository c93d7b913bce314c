"""Integration tests: JR with a real distributor and a memory node on loopback."""

from __future__ import annotations

import pytest
from shop.orders import place_order, status_of

from jobreactor import JobFailed
from jobreactor.testing import JobSystem

# No waiting between attempts in these tests; restored after each one.
pytestmark = pytest.mark.jobreactor(config={"retry_multiplier": 0, "max_attempt": 2})


def test_orders_go_through_a_real_node(jobreactor_system: JobSystem) -> None:
    for i in range(5):
        place_order(f"o{i}", "ann@example.com", 100 + i)
    place_order("flaky", "bob@flaky.example", 100)
    jobreactor_system.wait_idle(timeout=20)
    assert [status_of(f"o{i}") for i in range(5)] == [f"paid (ch_o{i})" for i in range(5)]
    assert status_of("flaky") == "paid (ch_flaky)"
    assert len(jobreactor_system.outcomes.successes("charge_card")) == 6


def test_a_declined_card_reaches_the_error_feedback(jobreactor_system: JobSystem) -> None:
    handle = place_order("bad", "eve@declined.example", 100)
    assert handle is not None
    with pytest.raises(JobFailed):
        handle.result(timeout=20)
    jobreactor_system.outcomes.wait(1, name="charge_card", outcome="error", timeout=20)
    assert status_of("bad") == "failed after 2 tries: card declined"


def test_the_plugin_came_from_the_entry_point(request: pytest.FixtureRequest) -> None:
    plugin = request.config.pluginmanager.get_plugin("jobreactor")
    assert plugin is not None
    assert plugin.__name__ == "jobreactor.testing.plugin"
    dists = {dist.project_name for _, dist in request.config.pluginmanager.list_plugin_distinfo()}
    assert "jobreactor" in dists  # loaded through jobreactor's pytest11 entry point
