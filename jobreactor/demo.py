"""`jobreactor demo`: the embedded default, visibly working.

A distributor and a memory node on one reactor, in one process, on a free port. Its jobs are
defined here (a registry of its own), so the demo works from any directory after install.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jobreactor.definitions import Registry
from jobreactor.reactor import Reactor


def demo_registry() -> Registry:
    registry = Registry()

    @registry.job("square")
    def square(args: dict[str, Any]) -> None:
        args["result"] = args["n"] * args["n"]

    @registry.job_callback("square", "tag")
    def tag(args: dict[str, Any]) -> None:
        args["checked"] = args["result"] == args["n"] ** 2

    @registry.job("flaky")
    def flaky(args: dict[str, Any]) -> None:
        if args["n"] % 1000 == 998:  # one in a thousand fails, to show error feedbacks
            raise ValueError(f"{args['n']} is unlucky")
        args["result"] = -args["n"]

    return registry


def run_demo(jobs: int = 20_000, nodes: int = 1) -> None:
    console = Console()
    reactor = Reactor(logger_method="WARNING", log_job_processing=False, max_attempt=1)
    reactor.run()
    host, port = reactor.start_distributor("127.0.0.1", 0)
    registry = demo_registry()
    for index in range(nodes):
        reactor.start_node(f"demo-node-{index + 1}", "memory", [(host, port)], registry=registry)
    console.print(
        f"[bold]jobreactor demo[/]: distributor on {host}:{port}, "
        f"{nodes} memory node(s): {', '.join(n['name'] for n in reactor.nodes())}"
    )
    done = threading.Semaphore(0)
    outcome = {"ok": 0, "failed": 0, "wrong": 0}
    lock = threading.Lock()

    def succeeded(args: dict[str, Any]) -> None:
        with lock:
            outcome["ok"] += 1
            if args.get("result") not in (args["n"] * args["n"], -args["n"]):
                outcome["wrong"] += 1
        done.release()

    def failed(args: dict[str, Any]) -> None:
        with lock:
            outcome["failed"] += 1
        done.release()

    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        sent = progress.add_task("enqueued ", total=jobs)
        finished = progress.add_task("feedbacks", total=jobs)
        for n in range(jobs):
            name = "square" if n % 2 else "flaky"
            reactor.enqueue(name, {"n": n}, success=succeeded, error=failed)
            if n % 500 == 0:
                progress.update(sent, completed=n + 1)
                progress.update(finished, completed=outcome["ok"] + outcome["failed"])
        progress.update(sent, completed=jobs)
        for received in range(jobs):
            if not done.acquire(timeout=60):
                console.print("[red]timed out waiting for feedbacks[/]")
                break
            if received % 500 == 0:
                progress.update(finished, completed=received + 1)
        progress.update(finished, completed=outcome["ok"] + outcome["failed"])
    elapsed = time.perf_counter() - started
    reactor.stop()
    total = outcome["ok"] + outcome["failed"]
    console.print(
        f"[bold green]{total} jobs done[/] ({outcome['ok']} succeeded, {outcome['failed']} failed "
        f"on purpose, {outcome['wrong']} wrong results) in {elapsed:.2f}s: "
        f"[bold]{total / elapsed:,.0f} jobs/s[/]"
    )
