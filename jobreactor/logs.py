"""Logging setup: the classic text lines, or one JSON object per line (`log_format = "json"`).

Per-job lines (`log_job_processing`) carry their fields as `extra` (`job_fields`), built only
when such a line is logged: with the lines off they cost nothing. One INFO line per job by
default: "complete" (or "retry" for an attempt that will be retried); "start" is DEBUG; a final
failure is its own outcome, "failed", at WARNING with the traceback.
The text format shows the message as the Ruby gem's lines read; the JSON format adds the
fields, named as the metrics' labels and the dashboard's URLs are:

    {"ts": "2026-11-26T01:02:03.456+00:00", "level": "INFO", "logger": "jobreactor.node",
     "message": "complete 'send_mail' (5f0c…)", "job_id": "5f0c…", "job": "send_mail",
     "node": "worker1", "distributor": "10.0.0.5:5000", "attempt": 1, "outcome": "complete",
     "duration_s": 0.0123}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from typing import Any

__all__ = [
    "JOB_FIELDS",
    "JsonFormatter",
    "apply_log_format",
    "fit_host_logging",
    "job_fields",
    "log_job",
    "log_job_failed",
    "log_job_retry",
    "setup_logging",
]

JOB_FIELDS = ("job_id", "job", "node", "distributor", "attempt", "outcome", "duration_s")


def job_fields(record: Any, outcome: str | None = None) -> dict[str, Any]:
    """The `extra` of a per-job log line about JobRecord `record`."""
    fields: dict[str, Any] = {
        "job_id": record.id,
        "job": record.name,
        "node": record.node,
        "distributor": record.distributor,
        "attempt": record.attempt,
    }
    if outcome is not None:
        fields["outcome"] = outcome
        if record.run_at:
            fields["duration_s"] = round(time.time() - record.run_at, 6)
    return fields


def log_job(logger: logging.Logger, event: str, record: Any) -> None:
    """A per-job line: "start" (DEBUG) or "complete" (INFO), worded as the Ruby gem's."""
    if event == "start":
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "start %r (%s, attempt %d)", record.name, record.id, record.attempt,
                extra=job_fields(record),
            )  # fmt: skip
        return
    logger.info("complete %r (%s)", record.name, record.id, extra=job_fields(record, outcome=event))


def log_job_retry(logger: logging.Logger, record: Any, limit: int, delay_s: float) -> None:
    """An attempt failed and will be retried (INFO: retries are routine)."""
    logger.info(
        "retry %r (%s) attempt %d of %d failed, next in %.1fs: %s",
        record.name, record.id, record.attempt, limit, delay_s, record.last_error,
        extra=job_fields(record, outcome="retry"),
    )  # fmt: skip


def log_job_failed(logger: logging.Logger, record: Any, exc: BaseException) -> None:
    """The final failure of a job (WARNING, with the traceback): its error feedback follows."""
    logger.warning(
        "failed %r (%s) after %d attempt(s): %s",
        record.name, record.id, record.attempt, record.last_error,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra=job_fields(record, outcome="failed"),
    )  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# In a web worker several processes write to one stream: the pid tells them apart.
HOST_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class _HostHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `fit_host_logging` installs (so it can tell its own from the app's)."""


def fit_host_logging() -> bool:
    """In a web worker whose app configured no logging, give jobreactor's logger a handler with
    time, pid, level and logger name; True if it did. An app that configured logging (a root
    handler, or one on "jobreactor") keeps its own: nothing is added.

    Without this, gunicorn and uvicorn configure only their own loggers: jobreactor's INFO
    lines (node joined, adoption) vanish and its warnings come out bare through Python's
    last-resort handler.
    """
    ours = logging.getLogger("jobreactor")
    if logging.getLogger().handlers or ours.handlers:
        return False
    handler = _HostHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(HOST_FORMAT))
    ours.addHandler(handler)
    ours.propagate = False
    return True


def setup_logging(level: str | None, log_format: str = "text") -> None:
    """Configure the root logger for the command-line processes (node, distributor, dashboard)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=(level or "INFO").upper(), handlers=[handler], force=True)


def apply_log_format(logger: logging.Logger, log_format: str) -> None:
    """In an app: give jobreactor's logger its own JSON handler (and stop propagating, so lines
    are not written twice), or remove it again for "text"."""
    ours = [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]
    if log_format == "json":
        for host in [h for h in logger.handlers if isinstance(h, _HostHandler)]:
            logger.removeHandler(host)  # one line per record, in JSON
    if log_format == "json" and not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    elif log_format != "json" and ours:
        for old in ours:
            logger.removeHandler(old)
        logger.propagate = True
