"""Configuration: pydantic models, TOML files and `JOBREACTOR_*` environment overrides.

`ReactorConfig` holds the Ruby gem's `JR.config` keys, same names and defaults, plus our extras.
`Config` is the mutable face `JR.config` shows (`update()`, item access); every change is
validated against the model, so a typo is an error, not a silently ignored key. Components take
a snapshot (`config.snapshot()`) when they start.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from jobreactor.config_errors import describe
from jobreactor.errors import ConfigError, UnknownConfigKey
from jobreactor.protocol import DEFAULT_MAX_FRAME_BYTES

ENV_PREFIX = "JOBREACTOR_"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ReactorConfig(_Strict):
    """Every tunable: the Ruby gem's names and defaults first, then ours."""

    job_directory: str = "reactor_jobs"
    max_attempt: int = Field(default=10, ge=1, le=2**63 - 1)
    retry_multiplier: float = Field(default=5, ge=0)
    retry_jobs_at_start: bool = True
    merge_job_itself_to_args: bool = False
    log_job_processing: bool = True
    always_use_specified_node: bool = False
    remove_done_jobs: bool = True
    remove_cancelled_jobs: bool = True
    remove_failed_jobs: bool = False
    # The Redis URL of redis storage when none is given to the call (the Ruby gem's setting
    # name, kept: it has nothing to do with the hiredis parser). Used only when set explicitly
    # (`redis_url_said`): redis storage never assumes localhost.
    hiredis_url: str = "redis://localhost:6379"
    # Prefix of every Redis key (all under one hash tag `{prefix}`), to share one Redis.
    redis_prefix: str = Field(default="jr", min_length=1)
    # The gem's monitor Redis (RedisMonitor() with no URL), and, when set explicitly while
    # hiredis_url is not, redis storage's Redis too: redis://<redis_host>:<redis_port>.
    redis_host: str = "localhost"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    # The log level of jobreactor's logger (the Ruby gem's setting name, kept): "DEBUG", "INFO",
    # "WARNING", "ERROR", or None / "off" to silence it.
    logger_method: str | None = "INFO"
    # "json": one JSON object per log line (job id, name, node, attempt, duration...).
    log_format: Literal["text", "json"] = "text"
    # Per-job counters and histograms (jobreactor/metrics.py); False skips even the increments.
    metrics: bool = True
    # /health says "degraded" when a job has waited (since due) this long for a node.
    health_max_pending_age: float = Field(default=300.0, gt=0)

    max_frame_bytes: int = Field(default=DEFAULT_MAX_FRAME_BYTES, ge=1024)
    thread_pool_size: int = Field(default=20, ge=1)  # EventMachine's default defer pool
    # defer="process" (node/process_pool.py): worker processes; None: one per core.
    process_pool_size: int | None = Field(default=None, ge=1)
    reconnect_interval: float = Field(default=1.0, gt=0)
    retry_strategy: Literal["linear", "exponential"] = "linear"
    default_priority: int = Field(default=0, ge=-(2**63), le=2**63 - 1)
    max_run_time: float | None = Field(default=None, gt=0)
    # Seconds a vanished Redis node keeps its jobs before they are taken over.
    node_grace: float = Field(default=30.0, ge=0)
    # Long enough for typical jobs to finish after SIGTERM, shorter than Kubernetes' 30 s.
    shutdown_timeout: float = Field(default=20.0, ge=0)
    secret: str | None = None
    # A distributor refuses to listen on a non-loopback address with no secret (and no TLS
    # client certificates) unless this is set: for networks that are trusted on their own.
    insecure: bool = False
    # Connections still in their handshake (anonymous) a distributor keeps; more are closed.
    max_unauthenticated: int = Field(default=128, ge=1)
    handshake_timeout: float = Field(default=2.0, gt=0)
    # An idle link pings this often and is closed after 3 silent intervals.
    heartbeat_interval: float = Field(default=5.0, gt=0)
    concurrency: int = Field(default=100, ge=1)
    # Jobs a node takes beyond its running slots (credits = concurrency + prefetch): enough to
    # keep a node busy across a network round trip; lower it for long jobs and fair spreading.
    prefetch: int = Field(default=900, ge=0)
    # Jobs waiting in a distributor for a node; enqueue raises QueueFull beyond this.
    max_pending_jobs: int = Field(default=2_000_000, ge=1)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    # Safety TTL for enqueue_id / perform_id / loner keys, so a lost job cannot block forever.
    unique_ttl: float = Field(default=86_400.0, gt=0)
    duplicate_delay: float = Field(default=30.0, ge=0)
    lock_timeout: float = Field(default=3600.0, ge=0)
    # A concurrency slot of a limit is a lease the holding node renews (every third of it);
    # a node that dies frees its slots when their lease ends (README "Limits").
    limit_lease: float = Field(default=30.0, gt=0)
    # With redis storage on the distributor, enqueue waits until the job is stored, this long;
    # past it the job is withdrawn (EnqueueTimeout: it never runs).
    enqueue_timeout: float = Field(default=5.0, gt=0)
    # False: enqueue/aenqueue return before a redis-backed distributor has stored the job (a
    # job lost to a crash or an outage in that window is lost silently). Per call: durable=.
    durable: bool = True
    # Connect/read timeout of a distributor's Redis storage: with Redis down, enqueue fails
    # within this (StorageUnavailable), and works again when Redis is back.
    redis_timeout: float = Field(default=5.0, gt=0)
    # Discovery (README "Discovery"): a Redis url where distributors register and
    # nodes find them, by group. None: no discovery (nodes use their static `distributors`).
    discovery_url: str | None = None
    group: str = Field(default="default", min_length=1, max_length=200, pattern=r"^[^{}]+$")
    # Registry heartbeat (seconds, ±10 % jitter) and how long an entry outlives its last beat.
    registry_beat: float = Field(default=5.0, gt=0)
    registry_ttl: float = Field(default=15.0, gt=0)
    # A dead distributor's journal is adopted by a live one of its group this long after its
    # last beat (must exceed registry_ttl: a live one that missed beats must not lose it).
    adopt_grace: float = Field(default=30.0, gt=0)
    # Loud mistakes: a node with no distributor, a distributor on port 0 that no node can find,
    # after this many seconds, are logged once at WARNING with what to do (0: never). Also:
    # due jobs that no connected node may run, this long, are logged once and make /health
    # "degraded" (distributor/backlog.py).
    warn_no_node_after: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _registry_times(self) -> ReactorConfig:
        if self.registry_ttl <= self.registry_beat:
            raise ConfigError(
                f"registry_ttl ({self.registry_ttl}) must exceed registry_beat "
                f"({self.registry_beat}); use 3-4 beats"
            )
        if self.adopt_grace <= self.registry_ttl:
            raise ConfigError(
                f"adopt_grace ({self.adopt_grace}) must exceed registry_ttl "
                f"({self.registry_ttl}), with a margin"
            )
        return self

    def redis_url_said(self) -> str | None:
        """The Redis URL these settings name on purpose, or None: `hiredis_url` if set, else
        redis://<redis_host>:<redis_port> if either was set; defaults alone say nothing."""
        if "hiredis_url" in self.model_fields_set:
            return self.hiredis_url
        if self.model_fields_set & {"redis_host", "redis_port"}:
            return f"redis://{self.redis_host}:{self.redis_port}"
        return None

    @field_validator("logger_method")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        import logging

        if value is not None and value.lower() in {"none", "null", "off", "false", ""}:
            return None  # None silences logging; TOML and env have no None, so these words say it
        if value is not None and not isinstance(logging.getLevelName(value.upper()), int):
            raise ConfigError(
                'expected a logging level name (DEBUG, INFO, WARNING, ERROR) or "off"'
            )
        return value


class DistributorAddress(_Strict):
    host: str
    port: int = Field(ge=0, le=65535)


def _addresses(value: Any) -> Any:
    """Accept [["h", p], ...], ["h:p", ...] or [{host, port}, ...]."""
    if not isinstance(value, list | tuple):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, list | tuple) and len(item) == 2:
            out.append({"host": item[0], "port": item[1]})
        elif isinstance(item, str) and ":" in item:
            host, _, port = item.rpartition(":")
            out.append({"host": host, "port": port})
        else:
            out.append(item)
    return out


class NodeConfig(_Strict):
    """`jobreactor node --config node.toml`: the node's own keys plus any ReactorConfig key."""

    name: str = Field(min_length=1)
    storage: Literal["memory", "redis"] = "memory"
    # Static addresses; may be empty when `discovery_url` finds them (both may be combined).
    distributors: tuple[DistributorAddress, ...] = ()
    job_directory: str | None = None
    redis_url: str | None = None
    concurrency: int | None = Field(default=None, ge=1)
    secret: str | None = None
    # Opt-in: serve /metrics (Prometheus) and /health on this port (0: a free one).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # The project's root, first on sys.path before the jobs load (default: the working
    # directory), and modules imported then, e.g. "jobreactor.contrib.django" (apppath.py).
    app_dir: str | None = None
    imports: tuple[str, ...] = ()
    # A node per core (README "A node per core"): a supervisor runs `processes` node processes
    # named <name>-1 … <name>-N; each is recycled (drained, then replaced) after
    # `max_jobs_per_process` attempts or above `max_memory_mb` of resident memory.
    processes: int = Field(default=1, ge=1, le=1024)
    max_jobs_per_process: int | None = Field(default=None, ge=1)
    max_memory_mb: float | None = Field(default=None, gt=0)
    settings: ReactorConfig = ReactorConfig()

    @property
    def supervised(self) -> bool:
        """True when `jobreactor node` runs a supervisor rather than one node."""
        return (
            self.processes > 1
            or self.max_jobs_per_process is not None
            or self.max_memory_mb is not None
        )

    @field_validator("distributors", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return _addresses(value)

    @field_validator("imports", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class DistributorConfig(_Strict):
    """`jobreactor distributor --config dist.toml` (plus `discovery_url`, `group`, any setting)."""

    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)
    advertise: str | None = None
    storage: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    secret: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Modules imported before it starts: where `JR.register_feedback(...)` calls live, so the
    # named feedbacks of jobs it restores or adopts fire here.
    imports: tuple[str, ...] = ()
    settings: ReactorConfig = ReactorConfig()

    @field_validator("imports", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


_NODE_KEYS = set(NodeConfig.model_fields) - {"settings"}
_DIST_KEYS = set(DistributorConfig.model_fields) - {"settings"}


_STRING_KEYS = {
    "name",
    "secret",
    "redis_url",
    "job_directory",
    "host",
    "advertise",
    "storage",
    "metrics_host",
    "app_dir",
} | {
    name
    for name, info in ReactorConfig.model_fields.items()
    if info.annotation in (str, str | None)
}


def _env_overrides(keys: set[str], environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        raw = environ.get(ENV_PREFIX + key.upper())
        if raw is None:
            continue
        if key in _STRING_KEYS:
            out[key] = raw  # JOBREACTOR_SECRET=123456 stays a string
            continue
        try:
            out[key] = json.loads(raw)  # lists, numbers, booleans
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _split(
    data: dict[str, Any],
    own_keys: set[str],
    environ: Mapping[str, str],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Merge file < environment < explicit overrides, then split node keys from settings."""
    setting_keys = set(ReactorConfig.model_fields)
    data = dict(data)
    table = data.pop("settings", None)
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError("'settings' must be a table of config keys")
        data = {**table, **data}  # a [settings] table is allowed; top-level keys win
    merged = {**data, **_env_overrides(own_keys | setting_keys, environ), **overrides}
    own = {k: v for k, v in merged.items() if k in own_keys or k not in setting_keys}
    settings = {k: v for k, v in merged.items() if k in setting_keys and k not in own_keys}
    # Node-level keys that are also settings flow into the settings too.
    for key in ("job_directory", "concurrency", "secret"):
        if merged.get(key) is not None and key in setting_keys:
            settings[key] = merged[key]
    own["settings"] = settings
    return own


_SETTING_DEFAULTS: dict[str, Any] = {
    name: info.default for name, info in ReactorConfig.model_fields.items()
}


def _describe(
    exc: ValidationError, source: str, own: set[str] | None = None, env: Iterable[str] = ()
) -> str:
    """The ValidationError in our words (config_errors.py): key, expectation, example."""
    known = set(ReactorConfig.model_fields) | (own or set()) | ({"settings"} if own else set())
    return describe(exc, source, known, _SETTING_DEFAULTS, env)


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_node_config(
    path: str | Path | None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> NodeConfig:
    """Read a node.toml (optional), apply JOBREACTOR_* and keyword overrides, validate."""
    data = load_toml(path) if path is not None else {}
    for key in ("job_directory", "app_dir"):
        if path is not None and isinstance(data.get(key), str):
            # A relative directory in a file means relative to that file, not to the cwd.
            data[key] = str((Path(path).parent / data[key]).resolve())
    explicit = {k: v for k, v in overrides.items() if v is not None}
    environ = os.environ if environ is None else environ
    raw = _split(data, _NODE_KEYS, environ, explicit)
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        env = _env_overrides(_NODE_KEYS | set(ReactorConfig.model_fields), environ)
        source = str(path or "node options")
        raise ConfigError(_describe(exc, source, _NODE_KEYS, env)) from None
    if not config.distributors and not config.settings.discovery_url:
        raise ConfigError(
            f"{path or 'node options'}: distributors = []: expected at least one entry, e.g. "
            'distributors = ["127.0.0.1:5000"], or discovery_url = "redis://..." to find the '
            "distributors of the node's group"
        )
    _needs_redis_url(config.storage, config.redis_url, config.settings, path or "node options")
    return config


def _needs_redis_url(
    storage: str, redis_url: str | None, settings: ReactorConfig, source: str | Path
) -> None:
    if storage == "redis" and not redis_url and settings.redis_url_said() is None:
        raise ConfigError(
            f'{source}: storage = "redis" needs a Redis URL: redis_url = "redis://host:6379/0" '
            "(or JOBREACTOR_REDIS_URL, or --redis-url); nothing is assumed, not even "
            "localhost:6379"
        )


def load_distributor_config(
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    *,
    partial: bool = False,
    **overrides: Any,
) -> DistributorConfig:
    """Read a distributor.toml (optional), apply JOBREACTOR_* and keyword overrides, validate.

    `partial`: the caller adds keywords of its own later (the web recipes), so a Redis URL
    missing here is not yet an error (start_distributor checks it).
    """
    data = load_toml(path) if path is not None else {}
    explicit = {k: v for k, v in overrides.items() if v is not None}
    environ = os.environ if environ is None else environ
    raw = _split(data, _DIST_KEYS, environ, explicit)
    source = str(path or "distributor options")
    try:
        config = DistributorConfig.model_validate(raw)
    except ValidationError as exc:
        env = _env_overrides(_DIST_KEYS | set(ReactorConfig.model_fields), environ)
        raise ConfigError(_describe(exc, source, _DIST_KEYS, env)) from None
    if not partial:
        _needs_redis_url(config.storage, config.redis_url, config.settings, source)
    return config


class Config:
    """`JR.config`: dict-like, validated on every change."""

    def __init__(self, **values: Any) -> None:
        self._model = self._validate(values)

    @staticmethod
    def _validate(values: Mapping[str, Any]) -> ReactorConfig:
        try:
            return ReactorConfig.model_validate(dict(values))
        except ValidationError as exc:
            raise ConfigError(_describe(exc, "JR.config")) from None

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        # Unset keys stay unset, so `model_fields_set` tells a key given on purpose from its
        # default (storage "redis" needs a Redis URL said somewhere: jobreactor/environment.py).
        merged = {**self._model.model_dump(exclude_unset=True), **(values or {}), **more}
        self._model = self._validate(merged)

    def restore(self, saved: ReactorConfig) -> None:
        """Put back settings taken earlier from `current` (what was unset stays unset)."""
        self._model = saved

    def __getitem__(self, key: str) -> Any:
        if key not in ReactorConfig.model_fields:
            raise UnknownConfigKey(
                f"{key!r} is not a setting (docs/reference/configuration.md lists them all)"
            )
        return getattr(self._model, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __iter__(self) -> Iterator[str]:
        return iter(ReactorConfig.model_fields)

    def __repr__(self) -> str:
        return f"Config({self._model.model_dump()})"

    @property
    def current(self) -> ReactorConfig:
        """The validated settings now in force (a frozen model: read it, don't keep it)."""
        return self._model

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self._model, key, default)

    def snapshot(self, **overrides: Any) -> ReactorConfig:
        """A frozen copy for a component starting now, with per-component overrides applied."""
        if not overrides:
            return self._model
        return self._validate({**self._model.model_dump(exclude_unset=True), **overrides})


def client_ssl_context(settings: ReactorConfig) -> ssl.SSLContext | None:
    """A node's TLS context from tls_ca (and tls_cert/tls_key for client certificates)."""
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def server_ssl_context(settings: ReactorConfig) -> ssl.SSLContext | None:
    """A distributor's TLS context from tls_cert/tls_key (and tls_ca to require client certs)."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=settings.tls_ca)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return context
