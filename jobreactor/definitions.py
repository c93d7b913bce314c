"""Job definitions: `@job`, `@job_callback`, `@job_errback` and the lock hooks.

Definitions go into a `Registry` object. A node loads its jobs directory into a fresh registry;
the module-level decorators register into whichever registry is loading at the time (or the
default one), so job files only ever write `from jobreactor import job`.
Decorators return the function unchanged, so jobs stay directly callable in tests.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jobreactor.errors import ConfigError, InvalidOptions, NoSuchJob
from jobreactor.job import ENQUEUE_OPTIONS
from jobreactor.limits import Limit, check_limits
from jobreactor.protocol.messages import MAX_NAME_CHARS

logger = logging.getLogger("jobreactor.definitions")

F = TypeVar("F", bound=Callable[..., Any])
Step = Callable[[dict[str, Any]], Any]


@dataclass(slots=True)
class JobDefinition:
    """One job: its body, its callback and errback chains, default options and hooks."""

    name: str
    fn: Step
    callbacks: list[tuple[str, Step]] = field(default_factory=list)
    errbacks: list[tuple[str, Step]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    lock_failed: Step | None = None
    lock_expired: Step | None = None
    loner_enqueue_failed: Step | None = None
    # Flow control (README "Limits"): concurrency ones first, then rates.
    limits: tuple[Limit, ...] = ()
    # True if any step of either chain is a coroutine function (then the attempt is a task).
    # Kept up to date by the registry, so the hot path reads a bool instead of inspecting.
    is_async: bool = False

    def refresh(self) -> None:
        steps = [self.fn, *(fn for _, fn in self.callbacks), *(fn for _, fn in self.errbacks)]
        self.is_async = any(inspect.iscoroutinefunction(step) for step in steps)


async def call_hook(hook: Step | None, args: dict[str, Any], what: str) -> None:
    """Run a definition's hook (`lock_failed`, `loner_enqueue_failed`, ...) on a copy of the
    args, plain or async; an exception in it is logged and contained."""
    if hook is None:
        return
    try:
        result = hook(dict(args))
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("%s hook raised; continuing", what)


class Registry:
    """Named job definitions. One per node; tests make their own."""

    def __init__(self) -> None:
        self._definitions: dict[str, JobDefinition] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._definitions

    def __getitem__(self, name: str) -> JobDefinition:
        try:
            return self._definitions[name]
        except KeyError:
            raise NoSuchJob(name) from None

    def __len__(self) -> int:
        return len(self._definitions)

    def names(self) -> list[str]:
        return sorted(self._definitions)

    def get(self, name: str) -> JobDefinition | None:
        return self._definitions.get(name)

    def job(self, name: str, **options: Any) -> Callable[[F], F]:
        """Register the decorated function as job `name`; `options` are its enqueue defaults.

        `limits=[Limit(...)]`: what every attempt of it waits for (README "Limits"); kept in
        `**options` so a `**dict` of enqueue defaults still type-checks.
        Raises InvalidOptions for an unknown option or a malformed limit.
        """
        checked = check_limits(name, options.pop("limits", ()))
        unknown = set(options) - ENQUEUE_OPTIONS
        if unknown:
            raise InvalidOptions(f"@job({name!r}): unknown default option(s) {sorted(unknown)}")
        untrusted: object = name  # callers from untyped code pass anything
        if not isinstance(untrusted, str) or not untrusted or len(untrusted) > MAX_NAME_CHARS:
            raise InvalidOptions(
                f"@job({str(name)[:60]!r}): a job name is a non-empty string of at most "
                f"{MAX_NAME_CHARS} characters"
            )

        def register(fn: F) -> F:
            if name in self._definitions:
                # As in the Ruby gem: defining a job again replaces it, callbacks included.
                logger.warning("job %r defined again; the new definition replaces it", name)
            definition = JobDefinition(name, fn, options=dict(options), limits=checked)
            definition.refresh()
            self._definitions[name] = definition
            return fn

        return register

    def job_callback(self, name: str, callback_name: str = "noname") -> Callable[[F], F]:
        """Append the decorated function to job `name`'s callback chain (define the job first)."""

        def register(fn: F) -> F:
            definition = self[name]
            definition.callbacks.append((callback_name, fn))
            definition.refresh()
            return fn

        return register

    def job_errback(self, name: str, errback_name: str = "noname") -> Callable[[F], F]:
        """Append the decorated function to job `name`'s errback chain (define the job first)."""

        def register(fn: F) -> F:
            definition = self[name]
            definition.errbacks.append((errback_name, fn))
            definition.refresh()
            return fn

        return register

    def _hook(self, attribute: str, name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            setattr(self[name], attribute, fn)
            return fn

        return register

    def job_lock_failed(self, name: str) -> Callable[[F], F]:
        """Called with the job's args when its `lock` is held by another run (resque-lock)."""
        return self._hook("lock_failed", name)

    def job_lock_expired(self, name: str) -> Callable[[F], F]:
        """Called with the args when the lock expired before the run released it."""
        return self._hook("lock_expired", name)

    def job_loner_enqueue_failed(self, name: str) -> Callable[[F], F]:
        """Called (where the enqueue happened) when `loner` refused an enqueue."""
        return self._hook("loner_enqueue_failed", name)

    def load_directory(self, directory: str | Path) -> list[Path]:
        """Import every `*.py` under `directory`, recursively, in sorted order."""
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError(f"job_directory {str(root)!r} does not exist or is not a directory")
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        with loading_into(self):
            for path in files:
                _import_file(path)
        return files


def _import_file(path: Path) -> None:
    module_name = f"jobreactor_jobs_{abs(hash(path.resolve()))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import job file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"job file {path} failed to import: {type(exc).__name__}: {exc}") from exc


default_registry = Registry()
_loading: contextvars.ContextVar[Registry | None] = contextvars.ContextVar(
    "jobreactor_loading_registry", default=None
)


def current_registry() -> Registry:
    """The registry a job file being loaded registers into; else the default one."""
    loading = _loading.get()
    return default_registry if loading is None else loading


@contextlib.contextmanager
def loading_into(registry: Registry) -> Iterator[Registry]:
    token = _loading.set(registry)
    try:
        yield registry
    finally:
        _loading.reset(token)


def job(name: str, **options: Any) -> Callable[[F], F]:
    """`@job("name")`: define a job. Optional enqueue defaults as keywords; `limits=[Limit(...)]`
    for flow control (README "Limits")."""
    return current_registry().job(name, **options)


def job_callback(name: str, callback_name: str = "noname") -> Callable[[F], F]:
    return current_registry().job_callback(name, callback_name)


def job_errback(name: str, errback_name: str = "noname") -> Callable[[F], F]:
    return current_registry().job_errback(name, errback_name)


def job_lock_failed(name: str) -> Callable[[F], F]:
    return current_registry().job_lock_failed(name)


def job_lock_expired(name: str) -> Callable[[F], F]:
    return current_registry().job_lock_expired(name)


def job_loner_enqueue_failed(name: str) -> Callable[[F], F]:
    return current_registry().job_loner_enqueue_failed(name)
