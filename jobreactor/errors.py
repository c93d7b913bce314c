"""Every exception jobreactor raises on purpose, under one root: `JobReactorError`.

The first split is whose fault it is (h11's Local/Remote): a `RemoteProtocolError`
means "close that peer, keep serving everyone else"; a `LocalProtocolError` is a bug here.
Callers branch on the class, never on the message; messages say what to do.
"""

from __future__ import annotations

from typing import Any


class JobReactorError(Exception):
    """Base class for every error jobreactor raises."""


class ConfigError(JobReactorError, ValueError):
    """A configuration value or file is invalid; the message names the key and the file."""


class UnknownConfigKey(ConfigError, KeyError):
    """`JR.config[key]` named no setting (the message lists where the keys are documented)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class InsecureBind(ConfigError):
    """A distributor would listen on a non-loopback address with no secret and no TLS client
    certificates: anyone who can reach the port could join as a node. Set `secret`, or
    `insecure = true` if the network itself is trusted."""


class CannotListen(JobReactorError, OSError):
    """A distributor could not bind or listen on its host and port (in use, not an address of
    this host, no permission); the message names them and what to do."""


class InvalidOptions(JobReactorError, ValueError):
    """Options of a call (`enqueue`'s, a batch's, a node op) are unknown, of the wrong type or
    contradictory."""


class InvalidArgs(JobReactorError, TypeError):
    """A value of the wrong type: job args that can't cross the wire (not plain data, or an
    integer outside -2**63..2**64-1), a value storage can't hold, a feedback that isn't
    callable, a batch ttl that isn't whole seconds."""


class NoSuchJob(JobReactorError):
    """No job with this name is defined on the node that got it: it fails at once, no retries."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no job named {name!r} is defined; check the node's job_directory")
        self.name = name


class ProtocolError(JobReactorError):
    """The wire protocol was violated. Use a subclass; it says who broke it."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: close that connection only."""


class FrameTooLarge(RemoteProtocolError):
    """A frame header announced more bytes than `max_frame_bytes` allows."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"frame of {size} bytes exceeds max_frame_bytes={limit}; "
            "raise max_frame_bytes on both sides if such jobs are intended"
        )
        self.size = size
        self.limit = limit


class MalformedFrame(RemoteProtocolError):
    """A frame body is not a valid message."""


class HandshakeFailed(RemoteProtocolError):
    """The peer did not complete the handshake in time, spoke another version, or failed auth."""


class ProtocolVersionMismatch(HandshakeFailed):
    """The peer speaks another protocol version; the message says which side to upgrade."""


class StorageError(JobReactorError):
    """A storage operation failed."""


class CorruptRecord(StorageError, ValueError):
    """A stored job record has a field that does not parse as its type (written by hand, or
    by another tool): the message names the field and its text."""


class StorageUnavailable(StorageError):
    """The storage backend (Redis) cannot be reached; retry later."""


class EnqueueTimeout(StorageError, TimeoutError):
    """A job was not stored within `enqueue_timeout` (Redis slow or paused): it was withdrawn.

    Told, not durable: the job will never run, even if the write lands later (the journal
    refuses a withdrawn id). Enqueue it again once Redis answers.
    """

    def __init__(self, job_id: str, seconds: float | None) -> None:
        waited = "in time" if seconds is None else f"within {seconds:g}s"
        super().__init__(
            f"job {job_id} was not stored {waited} (Redis slow or paused?): it was withdrawn "
            "and will not run; enqueue it again, or raise enqueue_timeout"
        )
        self.job_id = job_id


class ReactorClosed(JobReactorError):
    """The reactor is not running (never started, or stopped): start it with `JR.run()`."""


class ReactorForkedError(ReactorClosed):
    """This process is a fork of the one that started the reactor: start it again after fork.

    The message names the parent, where the reactor was started and what to do (each server's
    per-worker hook; README "Running inside a web app").
    """


class ReactorTimeout(JobReactorError, TimeoutError):
    """The reactor's loop did not answer a blocking call in time: something blocks the loop."""


class WaitTimeout(JobReactorError, TimeoutError):
    """A wait ended before what it waited for: `wait_idle`/`await_idle` (jobs still queued,
    pending or running), `wait_for_node`/`await_for_node` (no such node joined), a handle's
    `result()`. The message says what was still missing."""


class WrongThread(JobReactorError, RuntimeError):
    """A call made where it can't run: a blocking call (`JR.start_node`, `JR.stop`, an
    `enqueue` that waits for storage) on the reactor's own loop. Use the `a`-prefixed
    coroutine there (`await JR.astart_node(...)`, `await JR.aenqueue(...)`)."""


class ReactorRunning(JobReactorError, RuntimeError):
    """The reactor already runs where this call would start it again (`attach()` after
    `run()`, a test system or eager mode around a running reactor): start it in one place."""


class CannotCrossProcess(JobReactorError, TypeError):
    """A `defer="process"` job can't go to the process pool: a lambda or nested function body
    (the pool imports job code by module and name), an `async def` body, or args/results that
    aren't msgpack data. The message says which; the attempt fails with it."""


class ProcessJobError(JobReactorError):
    """A `defer="process"` job body raised in the process pool.

    Only data crosses back (msgpack, never pickle): the original class name is `error_class`,
    and the job's error value (`{"class": ...}`) carries that name, as for any job.
    """

    def __init__(self, error_class: str, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.traceback_text = traceback_text


class JobTimeout(JobReactorError, TimeoutError):
    """An attempt ran longer than its `max_run_time`."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"job {name!r} exceeded max_run_time={seconds:g}s (execution expired)")
        self.seconds = seconds


class JobFailed(JobReactorError):
    """The job's final outcome was an error; `.args_dict` holds the final args (with `error`)."""

    def __init__(self, job_id: str, args: dict[str, Any]) -> None:
        error = args.get("error")
        if isinstance(error, dict):
            error = f"{error.get('class')}: {error.get('message')}"
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id = job_id
        self.args_dict = args


class JobCancelled(JobReactorError):
    """The job was cancelled with `JR.cancel` before it finished."""


class AlreadyClosed(JobReactorError):
    """A batch was closed already: no more parts can be pushed (DistributedJob)."""


class CancelJob(JobReactorError):
    """Raise from a job, callback or errback to stop the job for good (docs/semantics.md §3).

    From the job or a callback: the success feedback fires with the args as they were
    before this attempt. From an errback: the error feedback fires. No further runs,
    periodic jobs included. It is a control-flow signal, not a failure; it sits under
    `JobReactorError` so `except JobReactorError` sees it.
    """


class QueueFull(JobReactorError):
    """The distributor's pending queue holds `max_pending_jobs` already: slow down or add nodes."""


class NodeOpError(JobReactorError, ValueError):
    """A node op (quiet / resume / drain) that is unknown, or impossible now (resume a drain)."""


class JobStepError(JobReactorError, TypeError):
    """A job step is declared wrongly: a plain `def` returned an awaitable (make it `async`)."""
