"""Dashboard fixtures: a real uvicorn server on a free port, and headless Debian chromium."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from jobreactor.metrics import reset_all
from tests.conftest import wait_until

CHROMIUM = os.environ.get("JOBREACTOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


class Served:
    """An ASGI app served by uvicorn in a thread, on 127.0.0.1:<free port>."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)
        self.thread.start()
        wait_until(lambda: bool(self.server.started), 10.0, "uvicorn to start")
        socket = self.server.servers[0].sockets[0]
        self.url = f"http://127.0.0.1:{socket.getsockname()[1]}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10.0)


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    """Each test's dashboard shows its own jobs (the figures are per process)."""
    reset_all()
    yield
    reset_all()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], Served]]:
    served: list[Served] = []

    def start(app: Any) -> Served:
        s = Served(app)
        served.append(s)
        return s

    yield start
    for s in served:
        s.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium from Debian (`.ci/run` installs it); fails, never skips, without it.

    Per test, not per session: Playwright's sync API keeps an event loop running in this
    thread while it is open, and later tests call asyncio.run() here."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} missing: `apt-get install -y chromium` (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page PNG under artifacts/screenshots/ (gitignored) for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
