"""jobreactor: asyncio client-server background jobs (a Python JobReactor).

The public API is exactly `__all__`: its names are kept from release to release (new ones are
added, none renamed).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from jobreactor.batch import Batch
from jobreactor.config import Config, ReactorConfig
from jobreactor.definitions import (
    Registry,
    job,
    job_callback,
    job_errback,
    job_lock_expired,
    job_lock_failed,
    job_loner_enqueue_failed,
)
from jobreactor.errors import (
    AlreadyClosed,
    CancelJob,
    ConfigError,
    CorruptRecord,
    InsecureBind,
    InvalidArgs,
    InvalidOptions,
    JobCancelled,
    JobFailed,
    JobReactorError,
    JobTimeout,
    NoSuchJob,
    QueueFull,
    ReactorClosed,
    ReactorForkedError,
    ReactorRunning,
    ReactorTimeout,
    StorageError,
    StorageUnavailable,
    UnknownConfigKey,
    WaitTimeout,
    WrongThread,
)
from jobreactor.handle import JobHandle
from jobreactor.limits import Limit, LimitKeyError
from jobreactor.monitor import RedisMonitor
from jobreactor.nodehandle import NodeHandle
from jobreactor.reactor import JR, Reactor

try:
    __version__ = version("jobreactor")
except PackageNotFoundError:  # pragma: no cover (running from a source tree)
    __version__ = "0.0.0"

__all__ = [
    "JR",
    "AlreadyClosed",
    "Batch",
    "CancelJob",
    "Config",
    "ConfigError",
    "CorruptRecord",
    "InsecureBind",
    "InvalidArgs",
    "InvalidOptions",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobReactorError",
    "JobTimeout",
    "Limit",
    "LimitKeyError",
    "NoSuchJob",
    "NodeHandle",
    "QueueFull",
    "Reactor",
    "ReactorClosed",
    "ReactorConfig",
    "ReactorForkedError",
    "ReactorRunning",
    "ReactorTimeout",
    "RedisMonitor",
    "Registry",
    "StorageError",
    "StorageUnavailable",
    "UnknownConfigKey",
    "WaitTimeout",
    "WrongThread",
    "__version__",
    "job",
    "job_callback",
    "job_errback",
    "job_lock_expired",
    "job_lock_failed",
    "job_loner_enqueue_failed",
]
