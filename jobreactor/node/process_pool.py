"""`defer="process"`: a plain (`def`) job body, with its callbacks, in a pool of processes.

For CPU-bound bodies: they run on other cores while the node's loop goes on with its other jobs
(a `defer=True` thread would hold the GIL). What crosses between the node and a pool process:

- the job code, by reference only: the module and qualified name of each step, which the pool
  process imports itself; a job loaded from the node's `job_directory` is found by its job name
  in that directory, loaded once per pool process. A lambda or nested function has no importable
  name: the attempt fails with `CannotCrossProcess` saying so;
- the args, and the args as the steps left them, as msgpack bytes (never pickle): args that
  aren't msgpack data fail the attempt with `CannotCrossProcess`;
- an exception as data (class name, message, traceback text): `ProcessJobError` on this side,
  whose error value keeps the original class name; `CancelJob` stays `CancelJob`.

The pool is concurrent.futures' ProcessPoolExecutor with the "spawn" start method (a fork of a
process running an event loop and threads is unsafe). It pickles the call itself, but the call
holds only strings and bytes made by this process, inside our own pool; nothing from the network
is ever unpickled. As with `defer=True`, an attempt past `max_run_time` is abandoned, not killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import multiprocessing
import os
import traceback
from typing import Any, Final

import msgpack

from jobreactor.definitions import JobDefinition, Registry, Step
from jobreactor.errors import CancelJob, CannotCrossProcess, JobTimeout, ProcessJobError
from jobreactor.node.runner import run_sync, steps_of

logger = logging.getLogger("jobreactor.node")

# Where definitions.load_directory puts job files: not importable by name in another process.
_JOB_FILE_MODULE: Final = "jobreactor_jobs_"

StepRef = tuple[str, str]  # (module, qualified name)
Outcome = tuple[str, Any, str, str]  # (kind, packed args | class name, message, traceback)


class ProcessPool:
    """The node's process pool, started on the first `defer="process"` attempt."""

    def __init__(self, size: int | None, job_directory: str | None) -> None:
        self.size = size or os.cpu_count() or 1
        self._job_directory = job_directory
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"<ProcessPool size={self.size} started={self._executor is not None}>"

    def _started(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.size, mp_context=multiprocessing.get_context("spawn")
            )
        return self._executor

    async def run(
        self, definition: JobDefinition, args: dict[str, Any], timeout_s: float | None
    ) -> BaseException | None:
        """Run the body and callbacks in the pool; `args` is updated in place, as inline."""
        name = definition.name
        try:
            refs = step_refs(definition)
            packed = _pack(args, f"job {name!r}: its args")
        except CannotCrossProcess as exc:
            return exc
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._started(), run_in_pool_process, name, refs, self._job_directory, packed
        )
        try:
            outcome = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return JobTimeout(name, timeout_s or 0.0)
        except concurrent.futures.BrokenExecutor as exc:
            self._executor = None  # a pool process died (killed, out of memory): a fresh pool
            return ProcessJobError(type(exc).__name__, f"the process pool broke: {exc}")
        return _settle(outcome, args)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def step_refs(definition: JobDefinition) -> list[StepRef] | None:
    """How the pool process finds the steps: by reference, or None (by job name, job file)."""
    steps = steps_of(definition)
    if definition.is_async:
        raise CannotCrossProcess(
            f"job {definition.name!r} is `async def`: it runs on the node's loop; "
            "defer='process' is for plain `def` bodies"
        )
    if all(str(getattr(s, "__module__", "")).startswith(_JOB_FILE_MODULE) for s in steps):
        return None
    refs = []
    for step in steps:
        module, qualname = getattr(step, "__module__", None), getattr(step, "__qualname__", "")
        if not module or "<" in qualname:
            raise CannotCrossProcess(
                f"job {definition.name!r}: step {qualname or step!r} is a lambda or a nested "
                "function, which a process pool can't import; define it at module level "
                "(or drop defer='process')"
            )
        refs.append((module, qualname))
    return refs


def _pack(value: Any, what: str) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CannotCrossProcess(
            f"{what} can't cross to or from the process pool ({exc}): use msgpack data "
            "(dict, list, str, bytes, int, float, bool, None)"
        ) from None


def _settle(outcome: Outcome, args: dict[str, Any]) -> BaseException | None:
    kind, payload, message, trace = outcome
    if kind == "ok":
        args.clear()
        args.update(msgpack.unpackb(payload, raw=False, strict_map_key=False))
        return None
    if kind == "cancel":
        return CancelJob(message)
    if kind == "cannot":
        return CannotCrossProcess(message)
    return ProcessJobError(str(payload), message, trace)


# --- in the pool process ----------------------------------------------------------------------

_directory_registry: Registry | None = None


def run_in_pool_process(
    job_name: str, refs: list[StepRef] | None, job_directory: str | None, packed: bytes
) -> Outcome:
    """The pool process's side: find the steps, run them on the unpacked args, pack the result."""
    try:
        steps = _resolve(job_name, refs, job_directory)
        args = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 (sent back as data, the attempt fails with it)
        return ("error", type(exc).__name__, f"loading job {job_name!r}: {exc}", "")
    raised = run_sync(steps, args)
    if raised is None:
        try:
            return ("ok", _pack(args, f"job {job_name!r}: the args its steps left"), "", "")
        except CannotCrossProcess as exc:
            return ("cannot", None, str(exc), "")
    if isinstance(raised, CancelJob):
        return ("cancel", None, str(raised), "")
    trace = "".join(traceback.format_exception(raised, limit=20))[-4000:]
    return ("error", type(raised).__name__, str(raised), trace)


def _resolve(job_name: str, refs: list[StepRef] | None, job_directory: str | None) -> list[Step]:
    if refs is not None:
        return [_import(module, qualname) for module, qualname in refs]
    global _directory_registry
    if _directory_registry is None:
        if job_directory is None:
            raise CannotCrossProcess(f"job {job_name!r} comes from a job file, and no directory")
        _directory_registry = Registry()
        _directory_registry.load_directory(job_directory)
    return steps_of(_directory_registry[job_name])


def _import(module: str, qualname: str) -> Step:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]
