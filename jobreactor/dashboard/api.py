"""The dashboard's JSON API (pinned names; README "Seeing what it does").

    GET <mount>/api/stats
      -> {"succeeded", "failed", "retried", "enqueued", "pending", "in_flight": int,
          "oldest_pending_s": float, "jobs": {name: {the same keys}}}
    GET <mount>/api/jobs?status=pending|retrying|scheduled|failed&page=N
      -> {"total": int, "jobs": [{"id", "name", "args", "status", "node", ...}], ...}
      (listing.py: per_page, q, name, node)

The counters are the metrics object's (`jobreactor.metrics`: the process's `METRICS`, or in
registry mode the sum over live processes): whatever that source of truth counts, this reads.
`pending`, `in_flight` and `oldest_pending_s` are the distributors' own figures; per job name
they come from the distributors' stats when those carry them (`pending_by_name`,
`oldest_pending_by_name`), else (this process's distributors) from their pending queues.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jobreactor import joblists as listing
from jobreactor.dashboard import views

COUNTERS = ("succeeded", "failed", "retried", "enqueued")


def stats_of(snap: dict[str, Any]) -> dict[str, Any]:
    """/api/stats from a snapshot (views.merged_metrics: one process or the registry's sum)."""
    metrics = views.merged_metrics(snap)
    distributors = snap.get("distributors") or []
    out: dict[str, Any] = {event: sum(getattr(metrics, event).values()) for event in COUNTERS}
    out["pending"] = sum(int(d.get("pending") or 0) for d in distributors)
    out["in_flight"] = sum(int(d.get("in_flight") or 0) for d in distributors)
    out["oldest_pending_s"] = max(
        [float(d.get("oldest_pending_s") or 0.0) for d in distributors] + [0.0]
    )
    by_name: dict[str, dict[str, Any]] = {}
    names = {n for event in COUNTERS for n in getattr(metrics, event)}
    for d in distributors:
        names.update((d.get("pending_by_name") or {}).keys())
    for name in sorted(names):
        row: dict[str, Any] = {
            event: int(getattr(metrics, event).get(name, 0)) for event in COUNTERS
        }
        row["pending"] = sum(
            int((d.get("pending_by_name") or {}).get(name, 0)) for d in distributors
        )
        row["in_flight"] = sum(
            int((d.get("in_flight_by_name") or {}).get(name, 0)) for d in distributors
        )
        row["oldest_pending_s"] = max(
            [float((d.get("oldest_pending_by_name") or {}).get(name, 0.0)) for d in distributors]
            + [0.0]
        )
        by_name[name] = row
    out["jobs"] = by_name
    return out


def pending_figures(entries: list[tuple[int, int, Any]], now: float) -> dict[str, Any]:
    """Per-name pending counts and oldest pending age from a distributor's pending entries
    (a copy taken on the loop; computed here, off it). Age = now − due, for jobs already due."""
    counts: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for _, _, job in entries:
        counts[job.name] = counts.get(job.name, 0) + 1
        age = now - float(job.run_at_ts or now)
        if age > oldest.get(job.name, 0.0):
            oldest[job.name] = age
    return {
        "pending_by_name": counts,
        "oldest_pending_by_name": oldest,
        "oldest_pending_s": max([*oldest.values(), 0.0]),
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=repr, ensure_ascii=False).encode()


class JSON(JSONResponse):
    """JSON that never fails on a value a job's args may hold (an exception: its repr)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


async def api_stats(request: Request) -> Response:
    d = request.app.state.dashboard
    snap = await d.snapshot(figures=True)
    return JSON(stats_of(snap))


async def api_jobs(request: Request) -> Response:
    d = request.app.state.dashboard
    try:
        query = listing.Query.from_params(request.query_params)
    except listing.BadQuery as exc:
        return JSON({"error": str(exc)}, 400)
    started = time.perf_counter()
    found = await d.list_jobs(query)
    found["jobs"] = [{k: v for k, v in job.items() if k != "record"} for job in found["jobs"]]
    found["took_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return JSON(found)
