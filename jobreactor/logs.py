"""Logging setup: the classic text lines, or one JSON object per line (`log_format = "json"`).

Per-job lines (start / error / complete, `log_job_processing`) carry their fields as `extra`
(`job_fields`), built only when such a line is logged: with the lines off they cost nothing.
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
    "job_fields",
    "log_job",
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
    """One per-job INFO line ("start", "error" or "complete"), worded as the Ruby gem's."""
    if event == "start":
        logger.info(
            "start %r (%s, attempt %d)", record.name, record.id, record.attempt,
            extra=job_fields(record),
        )  # fmt: skip
    elif event == "error":
        logger.info(
            "error %r (%s): %s", record.name, record.id, record.last_error,
            extra=job_fields(record, outcome="error"),
        )  # fmt: skip
    else:
        logger.info(
            "complete %r (%s)", record.name, record.id, extra=job_fields(record, outcome=event)
        )


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
    if log_format == "json" and not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    elif log_format != "json" and ours:
        for old in ours:
            logger.removeHandler(old)
        logger.propagate = True
