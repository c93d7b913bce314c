"""The pytest plugin: installing jobreactor is enough (entry point `pytest11`: `jobreactor`).

Fixtures (named `jobreactor_*`, so they can't clash with a project's own):

- `jobreactor_eager`: `JR.enqueue` runs jobs inline and calls feedbacks before it returns
  (jobreactor.testing.eager). For unit tests.
- `jobreactor_system`: JR running with a distributor and a memory node on loopback
  (jobreactor.testing.system). For integration tests.

Where the jobs come from, first found wins:
  `@pytest.mark.jobreactor(jobs="dir")` (relative to the test file),
  `--jobreactor-jobs DIR` (relative to the current directory),
  `jobreactor_jobs = DIR` in the ini file (relative to it);
  none: the jobs your code defines with `@job` in modules already imported.
The marker also takes `config={...}` (JR.config keys for this test, restored after) and
`periodic_runs=N` (eager: how many runs a periodic job gets, default 1).

Nothing of jobreactor is imported until a fixture is used, so the plugin costs nothing to a
suite that doesn't use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from jobreactor.testing.eager import EagerMode
    from jobreactor.testing.system import JobSystem

_MARKER_KEYS = frozenset({"jobs", "config", "periodic_runs"})


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jobreactor", "jobreactor: testing your jobs")
    group.addoption(
        "--jobreactor-jobs",
        dest="jobreactor_jobs",
        default=None,
        metavar="DIR",
        help="directory of job definitions the jobreactor fixtures load",
    )
    parser.addini(
        "jobreactor_jobs", "directory of job definitions (relative to this file)", default=""
    )
    parser.addini(
        "jobreactor_periodic_runs", "eager mode: runs a periodic job gets (default 1)", default="1"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "jobreactor(jobs=None, config=None, periodic_runs=None): settings of the jobreactor "
        "fixtures for this test",
    )


@dataclass
class _Options:
    jobs: Path | None
    config: dict[str, Any] = field(default_factory=dict)
    periodic_runs: int = 1


def _options(request: pytest.FixtureRequest) -> _Options:
    marker = request.node.get_closest_marker("jobreactor")
    given: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    unknown = set(given) - _MARKER_KEYS
    if unknown:
        raise pytest.UsageError(
            f"@pytest.mark.jobreactor: unknown option(s) {sorted(unknown)}; "
            f"allowed: {sorted(_MARKER_KEYS)}"
        )
    config = request.config
    jobs: Path | None = None
    if given.get("jobs") is not None:
        jobs = Path(request.path).parent / given["jobs"]
    elif config.getoption("jobreactor_jobs"):
        jobs = config.invocation_params.dir / config.getoption("jobreactor_jobs")
    elif config.getini("jobreactor_jobs"):
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        jobs = base / str(config.getini("jobreactor_jobs"))
    runs = given.get("periodic_runs") or int(str(config.getini("jobreactor_periodic_runs")))
    return _Options(jobs, dict(given.get("config") or {}), int(runs))


@pytest.fixture
def jobreactor_eager(request: pytest.FixtureRequest) -> Iterator[EagerMode]:
    """JR in eager mode for this test: enqueue runs the job and its feedbacks at once."""
    from jobreactor import JR
    from jobreactor.testing.eager import EagerMode

    options = _options(request)
    with EagerMode(
        JR, jobs=options.jobs, config=options.config, periodic_runs=options.periodic_runs
    ) as eager:
        yield eager


@pytest.fixture
def jobreactor_system(request: pytest.FixtureRequest) -> Iterator[JobSystem]:
    """JR running with a distributor and a memory node for this test; stopped after it."""
    from jobreactor.testing.system import running_system

    options = _options(request)
    with running_system(options.jobs, config=options.config) as system:
        yield system
