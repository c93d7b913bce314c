"""The pytest plugin, as a user's suite meets it: loaded through the `pytest11` entry point.

One real `pytest` run over a small project written here: the jobs directory from the ini
file, the marker and the command line; the marker's config; a bad marker option. The sample
project (examples/testing_project) is run by .ci/run as a suite of its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

JOBS = """
from jobreactor import job

@job("{name}")
def run(args):
    args["by"] = "{name}"
"""

TESTS = """
import pytest
from jobreactor import JR

def test_ini_jobs_in_eager_mode(jobreactor_eager):
    assert JR.enqueue("from_ini", {}).result(0) == {"by": "from_ini"}

@pytest.mark.jobreactor(jobs="marker_jobs", config={"max_attempt": 4})
def test_marker_jobs_and_config(jobreactor_eager):
    assert JR.config["max_attempt"] == 4
    assert JR.enqueue("from_marker", {}).result(0) == {"by": "from_marker"}

def test_config_is_restored():
    assert JR.config["max_attempt"] == 10

def test_ini_jobs_on_a_real_node(jobreactor_system):
    handle = JR.enqueue("from_ini", {})
    jobreactor_system.wait_idle(timeout=20)
    assert handle.result(0) == {"by": "from_ini"}
    assert jobreactor_system.outcomes.successes("from_ini") == [{"by": "from_ini"}]

@pytest.mark.jobreactor(job_dir="oops")
def test_bad_marker_option(jobreactor_eager):
    pass
"""


def test_the_entry_point_names_the_plugin() -> None:
    (point,) = [e for e in entry_points(group="pytest11") if e.name == "jobreactor"]
    assert point.value == "jobreactor.testing.plugin"


def test_our_own_suite_has_the_plugin_and_its_fixtures_do_not_clash(
    request: pytest.FixtureRequest,
) -> None:
    plugin = request.config.pluginmanager.get_plugin("jobreactor")
    assert plugin is not None
    assert plugin.__name__ == "jobreactor.testing.plugin"


def test_a_user_suite_gets_the_fixtures_from_the_entry_point(tmp_path: Path) -> None:
    for folder, name in (("jobs", "from_ini"), ("tests/marker_jobs", "from_marker")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "jobs.py").write_text(JOBS.format(name=name))
    (tmp_path / "pytest.ini").write_text("[pytest]\njobreactor_jobs = jobs\n")
    (tmp_path / "tests" / "test_user.py").write_text(textwrap.dedent(TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "4 passed, 1 error" in out, out
    assert "unknown option(s) ['job_dir']" in out

    # --jobreactor-jobs wins over the ini file.
    (tmp_path / "cli_jobs").mkdir()
    (tmp_path / "cli_jobs" / "jobs.py").write_text(
        'from jobreactor import job\n\n@job("from_ini")\ndef run(args):\n    args["by"] = "cli"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--jobreactor-jobs",
         "cli_jobs", "tests", "-k", "test_ini_jobs_in_eager_mode"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert "AssertionError" in proc.stdout  # the job from cli_jobs ran: {"by": "cli"}
    assert "'by': 'cli'" in proc.stdout
