"""Job lists for the dashboard's pages, `GET <mount>/api/jobs` and `jobreactor jobs failed`:
one query, one answer shape (no web dependency: the CLI uses it without the dashboard extra).

    GET <mount>/api/jobs?status=pending|retrying|scheduled|failed&page=N
        [&per_page=50][&q=substring of id, name or args][&name=job name][&node=node name]
    -> {"total": int, "jobs": [{"id", "name", "args", "status", "node", ...}], "page": N,
        "per_page": 50, "pages": int, "partial": bool, "searched": int}

Failed and retrying jobs come from the per-node indexes (storage/status_index.py): the total is
a ZCARD per node and a page is a ZREVRANGE/ZRANGE plus one read of that page's records, exact
and without a scan, however many jobs are stored. A search (`q` or `name`) reads records in the
index's order, at most `SEARCH_BUDGET` of them: `partial` says the budget ran out before the
end (the total then counts the matches found so far). Pending jobs come in dispatch order
(priority, then FIFO) per distributor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from jobreactor.job import JobRecord, JobStatus
from jobreactor.storage.status_index import IndexKind, merge_pages

if TYPE_CHECKING:
    from jobreactor.monitor import RedisMonitor

STATUSES: Final = ("pending", "retrying", "scheduled", "failed")
PER_PAGE: Final = 50
MAX_PER_PAGE: Final = 500
MAX_PAGE: Final = 100_000
SEARCH_BUDGET: Final = 20_000  # records read at most by one search
SEARCH_CHUNK: Final = 500
QUERY_MAX: Final = 200  # characters of a search or filter

View = dict[str, Any]


class BadQuery(ValueError):
    """A query parameter out of range: the API answers 400 with this text."""


def _int(params: Any, key: str, default: int, low: int, high: int) -> int:
    text = params.get(key)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadQuery(f"{key} must be a whole number, got {text[:20]!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{key} must be between {low} and {high}")
    return value


def _text(params: Any, key: str) -> str:
    text = str(params.get(key) or "").strip()
    if len(text) > QUERY_MAX:
        raise BadQuery(f"{key} is longer than {QUERY_MAX} characters")
    return text


@dataclass(frozen=True, slots=True)
class Query:
    status: str
    page: int = 1
    per_page: int = PER_PAGE
    q: str = ""
    name: str = ""
    node: str = ""

    @classmethod
    def from_params(cls, params: Any, status: str | None = None) -> Query:
        status = status or str(params.get("status") or "")
        if status not in STATUSES:
            raise BadQuery(f"status must be one of {', '.join(STATUSES)}")
        return cls(
            status=status,
            page=_int(params, "page", 1, 1, MAX_PAGE),
            per_page=_int(params, "per_page", PER_PAGE, 1, MAX_PER_PAGE),
            q=_text(params, "q"),
            name=_text(params, "name"),
            node=_text(params, "node"),
        )

    @property
    def start(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def searching(self) -> bool:
        return bool(self.q or self.name)

    def matches(self, view: View) -> bool:
        return self.matches_fields(
            view.get("id"), view.get("name"), view.get("node"), view.get("args")
        )

    def matches_fields(self, job_id: Any, name: Any, node: Any, args: Any) -> bool:
        if self.name and name != self.name:
            return False
        if self.node and node not in (None, self.node):
            return False
        if not self.q:
            return True
        needle = self.q.lower()
        if needle in str(job_id or "").lower() or needle in str(name).lower():
            return True
        text = args if isinstance(args, str) else json.dumps(args, default=repr)
        return needle in text.lower()

    def params(self, **changed: Any) -> dict[str, Any]:
        """This query's parameters for a link (pagination keeps the filters)."""
        out = {"page": self.page, "q": self.q, "name": self.name, "node": self.node}
        out.update(changed)
        return {k: v for k, v in out.items() if v not in ("", None)}


def answer(query: Query, total: int, jobs: list[View], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "total": total,
        "jobs": jobs,
        "page": query.page,
        "per_page": query.per_page,
        "pages": max(1, math.ceil(total / query.per_page)),
        "partial": False,
    }
    out.update(extra)
    return out


def page_of(query: Query, views: Sequence[View], **extra: Any) -> dict[str, Any]:
    """A listing from every candidate view in order (filters applied here)."""
    found = [view for view in views if query.matches(view)]
    return answer(
        query, len(found), list(found[query.start : query.start + query.per_page]), **extra
    )


def job_view(record: JobRecord | dict[str, Any], **where: Any) -> View:
    """A job as the pages show it (a plain dict; templates escape every value)."""
    data = record.to_dict() if isinstance(record, JobRecord) else dict(record)
    view: View = {
        "id": str(data.get("id", "")),
        "name": str(data.get("name", "")),
        "args": data.get("args"),  # None: not known here (registry stats carry no args)
        "status": str(data.get("status", JobStatus.NEW)),
        "attempt": int(data.get("attempt", 0) or 0),
        "run_at_ts": float(data.get("run_at_ts", 0.0) or 0.0),
        "period": float(data.get("period", 0.0) or 0.0),
        "cron": data.get("cron"),  # a cron schedule (next run: run_at_ts), with its tz
        "tz": data.get("tz") or "UTC",
        "priority": int(data.get("priority", 0) or 0),
        "max_attempt": data.get("max_attempt"),
        "node": data.get("node"),
        "distributor": data.get("distributor") or "",
        "on_success": data.get("on_success"),
        "on_error": data.get("on_error"),
        "run_at": data.get("run_at"),
        "failed_at": data.get("failed_at"),
        "last_error": data.get("last_error"),
        "record": data,
    }
    view.update(where)
    return view


class IndexReader(Protocol):
    """A synchronous look at the status indexes (RedisMonitor, or LocalSource's storages)."""

    def nodes(self) -> list[str]: ...

    def index_count(self, node: str, kind: IndexKind) -> int: ...

    def index_page(
        self, node: str, kind: IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]: ...

    def views(self, node: str, job_ids: list[str]) -> list[View]:
        """The jobs' views in the order asked (those gone are left out)."""
        ...


def indexed(reader: IndexReader, kind: IndexKind, query: Query) -> dict[str, Any]:
    """Failed or retrying jobs: exact totals and pages from the indexes; searches budgeted."""
    nodes = [query.node] if query.node else reader.nodes()
    if query.searching:
        return _search(reader, kind, query, nodes)
    counts = {node: reader.index_count(node, kind) for node in nodes}
    total = sum(counts.values())
    live = [node for node, count in counts.items() if count]
    if len(live) == 1:  # one node: the page itself, however deep
        rows = [
            (live[0], i, s)
            for i, s in reader.index_page(live[0], kind, query.start, query.per_page)
        ]
    else:
        need = query.start + query.per_page
        pages = {node: reader.index_page(node, kind, 0, need) for node in live}
        rows = merge_pages(pages, kind, query.start, query.per_page)
    jobs = _load_in_order(reader, rows)
    return answer(query, total, jobs, by_node=counts)


def _load_in_order(reader: IndexReader, rows: list[tuple[str, str, float]]) -> list[View]:
    by_node: dict[str, list[str]] = {}
    for node, job_id, _ in rows:
        by_node.setdefault(node, []).append(job_id)
    found: dict[tuple[str, str], View] = {}
    for node, ids in by_node.items():
        for view in reader.views(node, ids):
            found[(node, view["id"])] = view
    return [found[(node, job_id)] for node, job_id, _ in rows if (node, job_id) in found]


def _search(reader: IndexReader, kind: IndexKind, query: Query, nodes: list[str]) -> dict[str, Any]:
    matches: list[tuple[float, View]] = []
    searched = 0
    partial = False
    for node in nodes:
        start = 0
        while True:
            if searched >= SEARCH_BUDGET:
                partial = True
                break
            rows = reader.index_page(node, kind, start, SEARCH_CHUNK)
            if not rows:
                break
            scores = dict(rows)
            for view in reader.views(node, [job_id for job_id, _ in rows]):
                if query.matches(view):
                    matches.append((scores.get(view["id"], 0.0), view))
            searched += len(rows)
            start += SEARCH_CHUNK
    matches.sort(key=lambda m: -m[0] if kind == "failed" else m[0])
    views = [view for _, view in matches]
    page = views[query.start : query.start + query.per_page]
    return answer(query, len(views), page, partial=partial, searched=searched)


def sorted_pending(
    entries: list[tuple[int, int, Any]], to_view: Callable[[Any], View]
) -> list[View]:
    """Pending entries (priority, seq, job) in dispatch order, as views (off the loop)."""
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [to_view(entry[2]) for entry in entries]


class MonitorIndex:
    """IndexReader over RedisMonitor (one connection, synchronous)."""

    def __init__(self, monitor: RedisMonitor) -> None:
        self.monitor = monitor

    def nodes(self) -> list[str]:
        return self.monitor.nodes()

    def index_count(self, node: str, kind: IndexKind) -> int:
        return self.monitor.index_count(node, kind)

    def index_page(
        self, node: str, kind: IndexKind, start: int, count: int
    ) -> list[tuple[str, float]]:
        return self.monitor.index_page(node, kind, start, count)

    def views(self, node: str, job_ids: list[str]) -> list[View]:
        records = self.monitor.load_many(node, job_ids)
        return [job_view(record, node=node, stored=True) for record in records]
