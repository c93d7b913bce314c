"""Across processes: the dashboard and `jobs pending` read the discovery registry.

Two app processes (this one and a subprocess), each with a distributor in group "shop":
the dashboard lists both, its /metrics sums both processes' counters, `jobs pending` shows
this one's waiting jobs, and the other disappears when it stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobreactor.dashboard import create_app
from tests.conftest import make_test_reactor, wait_until
from tests.dashboard.conftest import Served, screenshot
from tests.redis_server import RedisServer, unique_prefix
from tests.test_metrics import samples

pytestmark = pytest.mark.timeout(120)

FAST = {"registry_beat": 0.2, "registry_ttl": 0.8, "adopt_grace": 1.5}

OTHER_APP = textwrap.dedent(
    """
    import json, sys
    from jobreactor import Reactor, Registry

    settings = json.loads(sys.argv[1])
    registry = Registry()
    registry.job("work")(lambda args: None)
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, **settings["config"])
    reactor.run()
    _, port = reactor.start_distributor(
        "127.0.0.1", 0, discovery_url=settings["url"], group="shop"
    )
    reactor.start_node("other-node", "memory", [("127.0.0.1", port)], registry=registry)
    for handle in reactor.enqueue_many([("work", {"i": i}, None) for i in range(7)]):
        handle.result(20)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    reactor.stop(timeout=5)
    """
)


@pytest.fixture
def shop(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict[str, Any]]:
    prefix = unique_prefix()
    config = {"redis_prefix": prefix, **FAST}
    here = make_test_reactor(**config)
    script = tmp_path / "other_app.py"
    script.write_text(OTHER_APP)
    other = subprocess.Popen(
        [sys.executable, str(script), json.dumps({"url": redis_server.url, "config": config})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _, port = here.start_distributor(
            "127.0.0.1", 0, discovery_url=redis_server.url, group="shop"
        )
        handles = [here.enqueue("report", {"n": n}) for n in range(3)]  # no node: they wait
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "ready"
        yield {
            "url": redis_server.url,
            "prefix": prefix,
            "here": f"127.0.0.1:{port}",
            "other": other,
            "pending": [h.id for h in handles if h is not None],
        }
    finally:
        assert other.stdin is not None
        assert other.stdout is not None
        other.stdin.close()  # the other app stops (if it has not already)
        other.wait(20)
        other.stdout.close()
        here.stop(timeout=5)


def test_dashboard_sees_every_process_of_the_group(
    shop: dict[str, Any], serve: Callable[[Any], Served], page: Any
) -> None:
    app = create_app(discovery_url=shop["url"], group="shop", redis_prefix=shop["prefix"])
    served = serve(app)

    def scrape() -> dict[Any, float]:
        with urllib.request.urlopen(served.url + "/metrics", timeout=10) as answer:
            return samples(answer.read().decode())

    def both_counted() -> bool:
        got = scrape()
        return (
            got.get(("jobreactor_jobs_succeeded_total", (("job_name", "work"),))) == 7
            # no node declared "report": its jobs count under the one `unknown` series (unless
            # an earlier test of this process registered the name)
            and 3
            in (
                got.get(("jobreactor_jobs_enqueued_total", (("job_name", "unknown"),))),
                got.get(("jobreactor_jobs_enqueued_total", (("job_name", "report"),))),
            )
        )

    wait_until(both_counted, 20, "the other process's counters to reach the registry")
    assert scrape()[("jobreactor_distributor_pending", (("distributor", shop["here"]),))] == 3

    page.goto(served.url + "/")
    page.wait_for_selector("#distributors [data-node=other-node]")
    assert shop["here"] in page.locator("#distributors").inner_text()
    screenshot(page, "registry-overview")
    page.goto(served.url + "/queues")
    page.wait_for_selector(f"text={shop['pending'][0]}")
    screenshot(page, "registry-queues")

    page.goto(served.url + "/")
    other = shop["other"]
    other.stdin.close()
    other.wait(20)
    page.wait_for_selector("#distributors [data-node=other-node]", state="detached")
    assert page.locator("#distributors tbody tr").count() == 1


def test_jobs_pending_reads_the_registry(shop: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "jobreactor", "jobs", "--prefix", shop["prefix"], "pending"]
    command += ["--discovery-url", shop["url"], "--group", "shop"]
    as_json = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=30, check=True
    )
    found = {d["address"]: d for d in json.loads(as_json.stdout)["distributors"]}
    assert found[shop["here"]]["pending"] == 3
    assert sorted(j["id"] for j in found[shop["here"]]["pending_jobs"]) == sorted(shop["pending"])
    assert all(j["name"] == "report" for j in found[shop["here"]]["pending_jobs"])
    plain = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("# pending jobs (")
    assert lines[1].split("\t") == ["distributor", "id", "name", "priority", "due"]
    assert len(lines) == 2 + 3
    missing = subprocess.run(
        [sys.executable, "-m", "jobreactor", "jobs", "pending"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert missing.returncode == 2
    assert "--discovery-url" in missing.stderr
