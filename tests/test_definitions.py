"""Job definitions: the registry, its decorators and loading a jobs directory."""

from __future__ import annotations

import logging
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from jobreactor.definitions import (
    JobDefinition,
    Registry,
    current_registry,
    default_registry,
    job,
    job_callback,
    job_errback,
    job_lock_expired,
    job_lock_failed,
    job_loner_enqueue_failed,
    loading_into,
)
from jobreactor.errors import ConfigError, InvalidOptions, JobReactorError, NoSuchJob


def step(args: dict[str, Any]) -> None:
    args["step"] = True


def other_step(args: dict[str, Any]) -> None:
    args["other"] = True


async def async_step(args: dict[str, Any]) -> None:
    args["async"] = True


# --- the registry -------------------------------------------------------------------------------


def test_job_decorator_registers_and_returns_the_function_unchanged() -> None:
    registry = Registry()

    def body(args: dict[str, Any]) -> None:
        args["ran"] = True

    assert registry.job("echo")(body) is body
    definition = registry["echo"]
    assert isinstance(definition, JobDefinition)
    assert definition.name == "echo"
    assert definition.fn is body
    assert definition.callbacks == []
    assert definition.errbacks == []
    assert definition.options == {}
    assert "echo" in registry
    assert len(registry) == 1
    assert registry.get("echo") is definition


def test_callbacks_and_errbacks_keep_definition_order() -> None:
    registry = Registry()
    registry.job("echo")(step)

    def cb1(args: dict[str, Any]) -> None: ...
    def cb2(args: dict[str, Any]) -> None: ...
    def cb3(args: dict[str, Any]) -> None: ...
    def eb1(args: dict[str, Any]) -> None: ...
    def eb2(args: dict[str, Any]) -> None: ...

    assert registry.job_callback("echo", "first")(cb1) is cb1
    assert registry.job_errback("echo", "oops")(eb1) is eb1
    registry.job_callback("echo")(cb2)
    registry.job_errback("echo", "again")(eb2)
    registry.job_callback("echo", "third")(cb3)
    definition = registry["echo"]
    assert definition.callbacks == [("first", cb1), ("noname", cb2), ("third", cb3)]
    assert definition.errbacks == [("oops", eb1), ("again", eb2)]


def test_re_registering_a_job_replaces_it_and_drops_its_callbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # SPEC 1.3: a second definition replaces the first, callbacks included.
    registry = Registry()
    registry.job("echo", priority=1)(step)
    registry.job_callback("echo")(step)
    registry.job_errback("echo")(step)
    registry.job_lock_failed("echo")(step)
    with caplog.at_level(logging.WARNING, logger="jobreactor.definitions"):
        registry.job("echo")(other_step)
    definition = registry["echo"]
    assert definition.fn is other_step
    assert definition.callbacks == []
    assert definition.errbacks == []
    assert definition.options == {}
    assert definition.lock_failed is None
    assert len(registry) == 1
    assert any("echo" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "decorate",
    [
        lambda r: r.job_callback("missing"),
        lambda r: r.job_callback("missing", "named"),
        lambda r: r.job_errback("missing"),
        lambda r: r.job_lock_failed("missing"),
        lambda r: r.job_lock_expired("missing"),
        lambda r: r.job_loner_enqueue_failed("missing"),
    ],
    ids=["callback", "named callback", "errback", "lock_failed", "lock_expired", "loner"],
)
def test_attaching_to_an_undefined_job_raises_no_such_job(decorate: Any) -> None:
    registry = Registry()
    registry.job("other")(step)
    with pytest.raises(NoSuchJob) as info:
        decorate(registry)(step)
    assert info.value.name == "missing"
    assert registry["other"].callbacks == []


def test_looking_up_an_unknown_job_raises_no_such_job() -> None:
    registry = Registry()
    with pytest.raises(NoSuchJob, match="nope") as info:
        registry["nope"]
    assert info.value.name == "nope"
    assert isinstance(info.value, JobReactorError)
    assert registry.get("nope") is None
    assert "nope" not in registry


def test_names_are_sorted() -> None:
    registry = Registry()
    for name in ("zeta", "alpha", "mid"):
        registry.job(name)(step)
    assert registry.names() == ["alpha", "mid", "zeta"]
    assert len(registry) == 3


def test_lock_hooks_are_attached() -> None:
    registry = Registry()
    registry.job("locked", lock=True)(step)

    def failed(args: dict[str, Any]) -> None: ...
    def expired(args: dict[str, Any]) -> None: ...
    def refused(args: dict[str, Any]) -> None: ...

    assert registry.job_lock_failed("locked")(failed) is failed
    assert registry.job_lock_expired("locked")(expired) is expired
    assert registry.job_loner_enqueue_failed("locked")(refused) is refused
    definition = registry["locked"]
    assert definition.lock_failed is failed
    assert definition.lock_expired is expired
    assert definition.loner_enqueue_failed is refused


def test_default_options_are_kept_as_a_copy() -> None:
    registry = Registry()
    options = {"priority": 5, "max_attempt": 2}
    registry.job("echo", **options)(step)
    assert registry["echo"].options == {"priority": 5, "max_attempt": 2}
    registry["echo"].options["priority"] = 9
    assert options == {"priority": 5, "max_attempt": 2}


def test_unknown_default_options_are_refused_at_definition() -> None:
    registry = Registry()
    with pytest.raises(InvalidOptions, match="retries") as info:
        registry.job("echo", retries=3)
    assert isinstance(info.value, ValueError)
    assert "echo" not in registry


def test_every_enqueue_option_is_a_valid_default() -> None:
    registry = Registry()
    registry.job("echo", after=1, period=5, defer=True, node="w1", priority=2, lock=True)(step)
    assert registry["echo"].options["period"] == 5


# --- is_async ----------------------------------------------------------------------------------


def test_is_async_is_false_for_an_all_sync_chain() -> None:
    registry = Registry()
    registry.job("sync")(step)
    registry.job_callback("sync")(other_step)
    registry.job_errback("sync")(other_step)
    assert registry["sync"].is_async is False


def test_is_async_detects_an_async_body() -> None:
    registry = Registry()
    registry.job("a")(async_step)
    assert registry["a"].is_async is True


def test_is_async_detects_an_async_callback() -> None:
    registry = Registry()
    registry.job("a")(step)
    assert registry["a"].is_async is False
    registry.job_callback("a")(async_step)
    assert registry["a"].is_async is True


def test_is_async_detects_an_async_errback() -> None:
    registry = Registry()
    registry.job("a")(step)
    registry.job_errback("a")(async_step)
    assert registry["a"].is_async is True


# --- module-level decorators -------------------------------------------------------------------


def test_module_decorators_register_into_the_loading_registry() -> None:
    registry = Registry()
    name = f"ctx_{uuid.uuid4().hex}"
    with loading_into(registry) as active:
        assert active is registry
        assert current_registry() is registry
        job(name)(step)
        job_callback(name, "cb")(other_step)
        job_errback(name)(other_step)
        job_lock_failed(name)(step)
        job_lock_expired(name)(step)
        job_loner_enqueue_failed(name)(step)
    assert current_registry() is default_registry
    assert name not in default_registry
    definition = registry[name]
    assert definition.callbacks == [("cb", other_step)]
    assert definition.errbacks == [("noname", other_step)]
    assert definition.lock_failed is step
    assert definition.lock_expired is step
    assert definition.loner_enqueue_failed is step


def test_loading_into_restores_the_previous_registry_after_an_error() -> None:
    outer, inner = Registry(), Registry()
    with loading_into(outer):
        with pytest.raises(RuntimeError), loading_into(inner):
            raise RuntimeError("boom")
        assert current_registry() is outer
    assert current_registry() is default_registry


# --- load_directory -----------------------------------------------------------------------------


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "reactor_jobs"
    write(
        root / "a_jobs.py",
        """
        from jobreactor import job, job_callback, job_errback

        @job("top")
        def top(args):
            args["top"] = True

        @job_callback("top", "second")
        def second(args):
            args["second"] = True

        @job_errback("top")
        def on_error(args):
            args["handled"] = True
        """,
    )
    write(
        root / "sub" / "b_jobs.py",
        """
        from jobreactor.definitions import job, job_callback

        @job("nested", priority=3)
        async def nested(args):
            args["nested"] = True

        # A callback for a job defined in an earlier file (files load in sorted order).
        @job_callback("top", "third")
        def third(args):
            args["third"] = True
        """,
    )
    write(
        root / "sub" / "deeper" / "c_jobs.py",
        """
        from jobreactor import job

        @job("deepest")
        def deepest(args):
            args["deepest"] = True
        """,
    )
    write(root / "sub" / "notes.txt", "not python")
    write(root / "__pycache__" / "stale.py", "raise RuntimeError('must not be imported')\n")
    return root


def test_load_directory_is_recursive_and_sorted(jobs_dir: Path) -> None:
    registry = Registry()
    files = registry.load_directory(jobs_dir)
    assert files == [
        jobs_dir / "a_jobs.py",
        jobs_dir / "sub" / "b_jobs.py",
        jobs_dir / "sub" / "deeper" / "c_jobs.py",
    ]
    assert registry.names() == ["deepest", "nested", "top"]
    assert [name for name, _ in registry["top"].callbacks] == ["second", "third"]
    assert [name for name, _ in registry["top"].errbacks] == ["noname"]
    assert registry["nested"].options == {"priority": 3}
    assert registry["nested"].is_async
    assert not registry["top"].is_async


def test_loaded_jobs_run_as_written(jobs_dir: Path) -> None:
    registry = Registry()
    registry.load_directory(str(jobs_dir))  # a str path works too
    args: dict[str, Any] = {}
    definition = registry["top"]
    definition.fn(args)
    for _, callback in definition.callbacks:
        callback(args)
    assert args == {"top": True, "second": True, "third": True}


def test_load_directory_registers_into_that_registry_only(jobs_dir: Path) -> None:
    before = default_registry.names()
    first, second = Registry(), Registry()
    first.load_directory(jobs_dir)
    second.load_directory(jobs_dir)  # each registry gets its own definitions
    assert first.names() == second.names() == ["deepest", "nested", "top"]
    assert first["top"].fn is not second["top"].fn
    assert default_registry.names() == before
    assert current_registry() is default_registry


def test_files_with_the_same_name_in_different_folders_both_load(tmp_path: Path) -> None:
    write(tmp_path / "x" / "jobs.py", "from jobreactor import job\njob('from_x')(print)\n")
    write(tmp_path / "y" / "jobs.py", "from jobreactor import job\njob('from_y')(print)\n")
    registry = Registry()
    registry.load_directory(tmp_path)
    assert registry.names() == ["from_x", "from_y"]


def test_an_empty_directory_loads_nothing(tmp_path: Path) -> None:
    registry = Registry()
    assert registry.load_directory(tmp_path) == []
    assert len(registry) == 0


def test_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    with pytest.raises(ConfigError, match="no_such_dir") as info:
        Registry().load_directory(missing)
    assert isinstance(info.value, ValueError)


def test_a_file_instead_of_a_directory_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.py", "")
    with pytest.raises(ConfigError, match=r"jobs\.py"):
        Registry().load_directory(path)


@pytest.mark.parametrize(
    "source",
    [
        "raise RuntimeError('broken at import')\n",
        "import no_such_module_for_jobreactor_tests\n",
        "def broken(:\n",
        "from jobreactor import job_callback\njob_callback('undefined_job')(print)\n",
        "from jobreactor import job\njob('x', bogus=1)\n",
    ],
    ids=["raises", "bad import", "syntax error", "callback of undefined job", "bad option"],
)
def test_a_job_file_that_fails_is_a_config_error_naming_the_file(
    tmp_path: Path, source: str
) -> None:
    write(tmp_path / "a_good.py", "from jobreactor import job\njob('good')(print)\n")
    bad = write(tmp_path / "sub" / "z_broken.py", source)
    modules_before = set(sys.modules)
    registry = Registry()
    with pytest.raises(ConfigError) as info:
        registry.load_directory(tmp_path)
    assert str(bad) in str(info.value)
    assert info.value.__cause__ is not None
    assert current_registry() is default_registry
    leaked = {name for name in set(sys.modules) - modules_before if "z_broken" in name}
    assert leaked == set()
