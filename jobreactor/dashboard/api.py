"""The dashboard's JSON API (pinned names; README "Seeing what it does").

    GET <mount>/api/stats
      -> {"succeeded", "failed", "retried", "enqueued", "pending", "in_flight": int,
          "oldest_pending_s": float, "jobs": {name: {the same keys}}}
    GET <mount>/api/jobs?status=pending|retrying|scheduled|failed&page=N
      -> {"total": int, "jobs": [{"id", "name", "args", "status", "node", ...}], ...}
      (listing.py: per_page, q, name, node)

The figures are `jobreactor.metrics.job_stats`: the counters of the process's `METRICS` (or,
in registry mode, the sum over live processes) and the queue figures every distributor
publishes (`pending_by_name`, `in_flight_by_name`, `oldest_by_name`: distributor/backlog.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jobreactor import joblists as listing
from jobreactor.dashboard import views


def stats_of(snap: dict[str, Any]) -> dict[str, Any]:
    """/api/stats from a snapshot: `JobMetrics.job_stats` (the metrics side's one source of
    truth) over the snapshot's merged counters and its distributors' published figures."""
    stats = views.merged_metrics(snap).job_stats(snap.get("distributors") or [])
    return dict(stats)


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=repr, ensure_ascii=False).encode()


class JSON(JSONResponse):
    """JSON that never fails on a value a job's args may hold (an exception: its repr)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


async def api_stats(request: Request) -> Response:
    d = request.app.state.dashboard
    snap = await d.snapshot()
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
