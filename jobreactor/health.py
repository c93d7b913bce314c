"""`/health`: what is true now, not "the process is up".

One verdict from a few checks, each `{"ok": bool, ...}`:
- `loop`: the reactor's event loop answered within `LOOP_TIMEOUT_S` (mounted dashboard, node);
- `storage`: every distributor's and node's storage answered a read (Redis down: not ok);
  in registry mode, the discovery registry answered;
- `oldest_pending`: no job has waited (since due) for a node longer than
  `health_max_pending_age` (config, 300 s by default);
- `no_eligible_node`: no job has waited `warn_no_node_after` (10 s) with no connected node
  allowed to run it (distributor/backlog.py).

`status` is "down" (HTTP 503) when the loop or storage check fails, "degraded" (HTTP 503)
when a backlog check fails, else "ok" (200). Both failures answer 503, so a plain HTTP probe
sees them; the JSON body says which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from jobreactor.config import ReactorConfig
from jobreactor.errors import JobReactorError

if TYPE_CHECKING:
    from jobreactor.reactor import Reactor

LOOP_TIMEOUT_S = 2.0
STORAGE_TIMEOUT_S = 2.0
PROBE_KEY = "health-probe"  # a key read, never written

Check = dict[str, Any]
Verdict = tuple[int, dict[str, Any]]


def verdict(checks: dict[str, Check]) -> Verdict:
    """(HTTP status, body) from the checks: down beats degraded beats ok."""
    down = any(not checks[k]["ok"] for k in ("loop", "storage") if k in checks)
    degraded = any(not c["ok"] for c in checks.values())
    status = "down" if down else "degraded" if degraded else "ok"
    return (200 if status == "ok" else 503), {"status": status, "checks": checks}


def backlog_checks(
    distributors: Iterable[dict[str, Any]], max_pending_age: float, no_node_after: float
) -> dict[str, Check]:
    """The two backlog checks from distributors' `stats()` dicts (live or from the registry)."""
    oldest, stuck, stuck_s = 0.0, 0, 0.0
    names: set[str] = set()
    for d in distributors:
        oldest = max(oldest, float(d.get("oldest_pending_s", 0.0) or 0.0))
        if float(d.get("no_node_s", 0.0) or 0.0) >= no_node_after > 0:
            stuck += int(d.get("no_node_jobs", 0) or 0)
            stuck_s = max(stuck_s, float(d.get("no_node_s", 0.0)))
            names.update(str(n) for n in d.get("no_node_names") or ())
    return {
        "oldest_pending": {
            "ok": oldest < max_pending_age,
            "seconds": round(oldest, 3),
            "max": max_pending_age,
        },
        "no_eligible_node": {
            "ok": not stuck,
            "jobs": stuck,
            "seconds": round(stuck_s, 3),
            "names": sorted(names),
            "after": no_node_after,
        },
    }


async def _storage_check(storages: list[Any]) -> Check:
    for storage in storages:
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT_S):
                await storage.holder(PROBE_KEY)
        except TimeoutError:
            return {"ok": False, "error": f"{storage.kind} storage: no answer in 2 s"}
        except (JobReactorError, OSError) as exc:
            return {"ok": False, "error": f"{storage.kind} storage: {exc}"}
    return {"ok": True, "kinds": sorted({str(s.kind) for s in storages})}


def reactor_health(reactor: Reactor) -> Verdict:
    """The checks of one process's reactor (a mounted dashboard, a node's metrics port).
    Blocking: call it from a thread, not from the reactor's loop."""
    settings = reactor.config.current

    async def read() -> dict[str, Check]:
        distributors = list(reactor.members.distributors)
        members: list[Any] = [*distributors, *reactor.members.nodes]
        storages = {id(m.storage): m.storage for m in members}
        checks: dict[str, Check] = {"loop": {"ok": True}}
        checks["storage"] = await _storage_check(list(storages.values()))
        checks.update(
            backlog_checks(
                [d.backlog_watch.read().stats() for d in distributors],
                settings.health_max_pending_age,
                settings.warn_no_node_after,
            )
        )
        return checks

    if not reactor.ready():
        return verdict({"loop": {"ok": False, "error": "the reactor is not running"}})
    try:
        checks = reactor.call(read, timeout=LOOP_TIMEOUT_S + STORAGE_TIMEOUT_S)
    except TimeoutError:
        return verdict({"loop": {"ok": False, "error": "the event loop did not answer in time"}})
    except JobReactorError as exc:
        return verdict({"loop": {"ok": False, "error": str(exc)}})
    return verdict(checks)


def snapshot_health(
    distributors: Iterable[dict[str, Any]], settings: ReactorConfig | None = None
) -> Verdict:
    """Registry mode: the registry answered (else the caller reports "down"); backlog checks
    from what the distributors published with their last beat."""
    settings = settings or ReactorConfig()
    checks: dict[str, Check] = {"storage": {"ok": True, "kinds": ["registry"]}}
    checks.update(
        backlog_checks(distributors, settings.health_max_pending_age, settings.warn_no_node_after)
    )
    return verdict(checks)


def unreachable(error: str) -> Verdict:
    return verdict({"storage": {"ok": False, "error": error}})


def source_health(source: Any) -> Verdict:
    """A dashboard's `/health`: its reactor's checks when mounted (LocalSource), else the
    registry's (RegistrySource: unreachable registry is "down")."""
    reactor = getattr(source, "reactor", None)
    if reactor is not None:
        return reactor_health(reactor)
    try:
        snap = source.snapshot()
    except JobReactorError as exc:
        return unreachable(str(exc))
    return snapshot_health(snap.get("distributors") or [])
