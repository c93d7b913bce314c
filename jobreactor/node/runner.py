"""One attempt of one job: the callback chain, then (on failure) the errback chain.

docs/semantics.md §3: callbacks run in definition order on one shared args dict; the first raise
skips the rest and starts the errbacks, which see the args as they were *before* this attempt
plus `error`; an errback that raises skips the remaining errbacks and adds `errback_error`;
`CancelJob` anywhere stops the job for good. The chain runs inline on the loop for plain
functions (no task per job), as a task when a step is `async def`, and in the thread pool for
`defer` jobs. What to *do* with the outcome is the node's business (`Outcome`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Sequence
from typing import Any

from jobreactor.definitions import JobDefinition, Step
from jobreactor.errors import CancelJob, JobStepError, JobTimeout
from jobreactor.job import JobRecord, error_value


def steps_of(definition: JobDefinition) -> list[Step]:
    if not definition.callbacks:  # the usual case, once per attempt: no generator
        return [definition.fn]
    return [definition.fn, *(fn for _, fn in definition.callbacks)]


def errbacks_of(definition: JobDefinition) -> list[Step]:
    return [fn for _, fn in definition.errbacks]


def run_sync(steps: Sequence[Step], args: dict[str, Any]) -> BaseException | None:
    """Run plain steps in order on `args`; return the exception that stopped them, if any."""
    try:
        for step in steps:
            result = step(args)
            if result is not None and inspect.isawaitable(result):
                # A sync wrapper returned a coroutine: it can't be awaited on this path.
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                raise JobStepError(f"{step!r} returned an awaitable; declare it `async def`")
    except CancelJob as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 (a job's failure is data: it goes to errbacks)
        return exc
    return None


async def run_async(steps: Sequence[Step], args: dict[str, Any]) -> BaseException | None:
    """Like `run_sync`, awaiting steps that are coroutines."""
    try:
        for step in steps:
            result = step(args)
            if result is not None and inspect.isawaitable(result):
                await result
    except CancelJob as exc:
        return exc
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


async def run_steps(
    steps: Sequence[Step],
    args: dict[str, Any],
    *,
    is_async: bool,
    pool: concurrent.futures.ThreadPoolExecutor | None,
    timeout_s: float | None,
    job_name: str,
) -> BaseException | None:
    """Run `steps` the way the job asks: awaited, in the pool (defer), under a time limit."""
    loop = asyncio.get_running_loop()
    if pool is not None:
        future = loop.run_in_executor(pool, run_sync, steps, args)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            # The thread can't be killed; it is abandoned and its outcome ignored.
            return JobTimeout(job_name, timeout_s or 0.0)
    if not is_async:
        return run_sync(steps, args)
    if timeout_s is None:
        # No time limit, no asyncio.timeout: its enter/reschedule/exit were ~8 % of a node's
        # CPU on the peers' async body (py-spy, issue 13).
        return await run_async(steps, args)
    try:
        async with asyncio.timeout(timeout_s):
            return await run_async(steps, args)
    except TimeoutError:
        return JobTimeout(job_name, timeout_s or 0.0)


def plain_args(args: dict[str, Any]) -> dict[str, Any]:
    """Args fit for the wire and storage: live exceptions become error values (job.error_value)."""
    for value in args.values():  # a loop, not any(<generator>): once per attempt
        if isinstance(value, BaseException):
            break
    else:
        return args
    return {k: error_value(v) if isinstance(v, BaseException) else v for k, v in args.items()}


def job_itself(record: JobRecord) -> dict[str, Any]:
    """The record as the `job_itself` arg shows it (merge_job_itself_to_args)."""
    itself = record.to_dict()
    itself["args"] = plain_args(dict(record.args))
    itself.setdefault("attempt", record.attempt)
    itself.setdefault("status", str(record.status))
    itself.setdefault("node", record.node)
    itself.setdefault("make_after", record.make_after)  # the Ruby job_itself always had it
    return itself
