"""What the pages compute from a snapshot: totals, the jobs/s chart, per-job rows, filters,
and the Prometheus figures of a whole snapshot (one process or every registry member)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import TYPE_CHECKING, Any

from jinja2 import Environment

from jobreactor.metrics import EVENTS, Gauge, JobMetrics, stats_gauges, totals

if TYPE_CHECKING:
    from jobreactor.dashboard.app import History

CHART_W, CHART_H = 600, 160
HISTORY_WINDOW_S = 300.0


def merged_metrics(snap: dict[str, Any]) -> JobMetrics:
    """The snapshot's figures as one JobMetrics: `metrics` (one process) or the sum of
    `metrics_by_process` (registry: one entry per live process, so none counts twice)."""
    merged = JobMetrics()
    for part in snap.get("metrics_by_process") or [snap.get("metrics") or {}]:
        merged.merge(part)
    return merged


def totals_of(snap: dict[str, Any]) -> dict[str, int]:
    return totals(merged_metrics(snap))


def snapshot_gauges(snap: dict[str, Any]) -> list[Gauge]:
    return stats_gauges(snap.get("distributors", []), snap.get("nodes", []))


def job_rows(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per job name: each counter, and the mean run time."""
    metrics = merged_metrics(snap)
    names = sorted({name for counter in metrics.counters().values() for name in counter})
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        for event in EVENTS:
            row[event] = getattr(metrics, event)[name]
        runs = sum(metrics.run.counts(name))
        row["mean_run_s"] = metrics.run.total(name) / runs if runs else None
        rows.append(row)
    return rows


def chart(history: History) -> dict[str, Any]:
    """Inline SVG step lines of succeeded/s and failed/s (each rate held over the interval it
    was measured on). The window is the last minute, growing to five as samples accumulate."""
    series = {event: history.rates(event) for event in ("succeeded", "failed")}
    spans = [span for values in series.values() for span in values]
    now = time.time()
    oldest = min((t0 for t0, _, _ in spans), default=now)
    window = min(HISTORY_WINDOW_S, max(60.0, now - oldest))
    start = now - window
    top = max([rate for _, _, rate in spans] + [1.0])

    def line(values: list[tuple[float, float, float]]) -> str:
        points = []
        for t0, t1, rate in values:
            y = CHART_H - rate / top * (CHART_H - 10)
            for t in (max(t0, start), t1):
                points.append(f"{(t - start) / window * CHART_W:.1f},{y:.1f}")
        return " ".join(points)

    latest = {e: (values[-1][2] if values else 0.0) for e, values in series.items()}
    return {
        "width": CHART_W,
        "height": CHART_H,
        "top": top,
        "window": f"{window / 60:.0f} min ago" if window >= 120 else f"{window:.0f} s ago",
        "succeeded": line(series["succeeded"]),
        "failed": line(series["failed"]),
        "latest": latest,
    }


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float) or epoch <= 0:
        return "-"
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _ago(epoch: Any) -> str:
    if not isinstance(epoch, int | float) or epoch <= 0:
        return "-"
    delta = epoch - time.time()
    text = _span(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _span(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=repr, ensure_ascii=False)


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_line(value: Any) -> str:
    lines = str(value or "").strip().splitlines()
    return _short(lines[-1] if lines else "", 100)


def _without_errors(args: Any) -> Any:
    """Args as the job got them: the error an errback saw is shown apart."""
    if not isinstance(args, dict):
        return args
    return {k: v for k, v in args.items() if k not in ("error", "errback_error")}


_PATH_SAFE = re.compile(r"[A-Za-z0-9_.:@~-]{1,200}")


def path_safe(job_id: Any) -> bool:
    """Whether a job id can be a URL path segment as is (`/jobs/<id>`): anything else (a "/",
    "?", "#", "%", "..", spaces, non-ASCII) goes in the query, `/jobs/?id=<id>`."""
    text = str(job_id)
    return text not in (".", "..") and _PATH_SAFE.fullmatch(text) is not None


def install_filters(env: Environment) -> None:
    env.tests["path_safe"] = path_safe
    env.filters.update(
        when=_when,
        ago=_ago,
        span=_span,
        pretty=_pretty,
        short=_short,
        error_line=_error_line,
        without_errors=_without_errors,
    )
