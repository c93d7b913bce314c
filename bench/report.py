"""Figures, the markdown table, and the JSON record (machine, versions, parameters, figures)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT

OK = "ok"
INVALID = "INVALID"  # measured, but it could not be proven that every job ran exactly once
FAILED = "FAILED"  # the workload (or this case of it) did not finish; note says why
SKIPPED = "skipped"  # not run (missing redis-server, redis storage not available)


@dataclass(slots=True)
class Fig:
    """One row of the table."""

    case: str
    figure: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    peer: str = ""
    note: str = ""
    status: str = OK
    workload: str = ""
    storage: str = ""


def percentile(samples: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        return math.nan
    s = sorted(samples)
    pos = (len(s) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def fmt_value(fig: Fig) -> str:
    if fig.status in (FAILED, SKIPPED):
        return fig.status if fig.value is None else str(fig.value)
    v = fig.value
    if v is None:
        text = "—"
    elif isinstance(v, str):
        text = v
    elif isinstance(v, float) and math.isnan(v):
        text = "n/a"
    elif isinstance(v, int) or (isinstance(v, float) and abs(v) >= 1000):
        text = f"{v:,.0f}"
    elif abs(v) >= 100:
        text = f"{v:.1f}"
    elif abs(v) >= 1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3f}"
    if fig.status == INVALID:
        text = f"INVALID ({text})"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(figs: list[Fig]) -> str:
    head = ["workload", "storage", "case", "figure", "value", "unit", "best peer", "target", "note"]
    align = ["---", "---", "---", "---", "---:", "---", "---:", "---", "---"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for f in figs:
        cells = [f.workload, f.storage, f.case, f.figure, fmt_value(f), f.unit, f.peer, f.target,
                 f.note]  # fmt: skip
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


# --- machine and versions ---------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
         if line.startswith("model name")),
        platform.processor() or "?",
    )  # fmt: skip
    mem_kib = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
         if line.startswith("MemTotal:")),
        0,
    )  # fmt: skip
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "loadavg_at_start": load,
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def versions(redis_server: str | None) -> dict[str, Any]:
    jr: str | None = None
    try:
        import jobreactor

        jr = getattr(jobreactor, "__version__", None)
    except Exception:  # noqa: BLE001 -- the core may be broken; the bench still reports
        jr = None
    if jr is None:
        try:
            jr = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            jr = None
    status = _git("status", "--porcelain")
    return {
        "jobreactor": jr,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "uvloop": _dist_version("uvloop"),
        "msgpack": _dist_version("msgpack"),
        "redis_py": _dist_version("redis"),
        "hiredis": _dist_version("hiredis"),
        "pydantic": _dist_version("pydantic"),
        "rich": _dist_version("rich"),
        "redis_server": redis_server,
    }


def write_json(
    directory: Path,
    started: dt.datetime,
    params: dict[str, Any],
    figs: list[Fig],
    extra: dict[str, Any],
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        **extra,
        "parameters": params,
        "figures": [_jsonable(asdict(f)) for f in figs],
    }
    path.write_text(json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    return path


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    v = d.get("value")
    if isinstance(v, float) and not math.isfinite(v):
        d["value"] = None
    return d
