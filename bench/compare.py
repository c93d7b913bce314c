"""`python -m bench --compare REF`: the chosen workloads against another jobreactor, side by side.

REF is a git ref (checked out into a temporary `git worktree`, removed afterwards) or the path of
a checkout. Both sides run this tree's bench code, each against its own `jobreactor` package (a
small directory of two symlinks, `bench` and `jobreactor`, is each run's import root and the
node processes' too). Rounds alternate (ref, this, this, ref, ref, this, ...) so a machine whose
load drifts favours neither side; the table gives each side's median with its range, and the
change of this tree against REF in %.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import REPO_ROOT

# Flags of `python -m bench` that this mode consumes (the rest goes to every run).
OWN_FLAGS = {"--compare": 1, "--rounds": 1, "--results-dir": 1}
Key = tuple[str, str, str, str]


def child_argv(argv: list[str]) -> list[str]:
    """`argv` without the flags of this mode (`--flag value` and `--flag=value`)."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in OWN_FLAGS:
            skip = 0 if "=" in arg else OWN_FLAGS[name]
            continue
        out.append(arg)
    return out


@contextmanager
def library_of(ref: str, workdir: Path) -> Iterator[Path]:
    """The root of a checkout holding REF's `jobreactor` (a path as is, a git ref checked out)."""
    path = Path(ref).expanduser()
    if (path / "jobreactor" / "__init__.py").is_file():
        yield path.resolve()
        return
    tree = workdir / "ref-tree"
    git = ["git", "-C", str(REPO_ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False,
                       capture_output=True, timeout=120)  # fmt: skip


def import_root(library: Path, where: Path) -> Path:
    """A directory where `bench` is this tree's and `jobreactor` is `library`'s."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "bench").symlink_to(REPO_ROOT / "bench", target_is_directory=True)
    (where / "jobreactor").symlink_to(library / "jobreactor", target_is_directory=True)
    return where


def run_side(root: Path, argv: list[str], results: Path) -> dict[Key, tuple[float, str]]:
    """One run of `python -m bench argv` importing from `root`: its numeric figures."""
    env = {**os.environ, "PYTHONPATH": str(root), "BENCH_RUN_ROOT": str(root)}
    results.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench", *argv, "--results-dir", str(results)]
    with (results / "run.log").open("wb") as log:  # progress bars and errors, kept to read
        subprocess.run(cmd, cwd=root, env=env, check=False, stdout=subprocess.DEVNULL, stderr=log)
    figures: dict[Key, tuple[float, str]] = {}
    for path in sorted(results.glob("*.json")):  # none: the run failed (see run.log)
        for fig in json.loads(path.read_text())["figures"]:
            value = fig.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                key = (fig["workload"], fig["storage"], fig["case"], fig["figure"])
                figures[key] = (float(value), fig.get("unit", ""))
    return figures


def order(rounds: int) -> list[str]:
    """ref, this, this, ref, ref, this, ...: each side goes first every other round."""
    sides: list[str] = []
    for k in range(rounds):
        sides += ["ref", "this"] if k % 2 == 0 else ["this", "ref"]
    return sides


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:,.4g}"
    return f"{median:,.4g} ({min(values):,.4g}–{max(values):,.4g})"


def table(ref: str, got: dict[str, dict[Key, list[float]]], units: dict[Key, str]) -> str:
    head = ["workload", "storage", "case", "figure", "unit", f"{ref}", "this tree", "change"]
    rows = ["| " + " | ".join(head) + " |", "|---|---|---|---|---|---:|---:|---:|"]
    keys = list(dict.fromkeys([*got["ref"], *got["this"]]))
    for key in keys:
        before, after = got["ref"].get(key, []), got["this"].get(key, [])
        change = "—"
        if before and after and statistics.median(before):
            ratio = statistics.median(after) / statistics.median(before) - 1
            change = f"{100 * ratio:+.1f} %"
        cells = [*key, units.get(key, ""), spread(before), spread(after), change]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(ref: str, rounds: int, argv: list[str]) -> int:
    passed = child_argv(argv)
    with tempfile.TemporaryDirectory(prefix="jobreactor-compare-") as tmp:
        workdir = Path(tmp)
        with library_of(ref, workdir) as library:
            roots = {
                "ref": import_root(library, workdir / "root-ref"),
                "this": import_root(REPO_ROOT, workdir / "root-this"),
            }
            got: dict[str, dict[Key, list[float]]] = {"ref": {}, "this": {}}
            units: dict[Key, str] = {}
            for n, side in enumerate(order(rounds)):
                load = os.getloadavg()[0]
                print(f"round {n // 2 + 1}/{rounds}: {side} (load {load:.2f})", file=sys.stderr)
                figures = run_side(roots[side], passed, workdir / f"results-{n}-{side}")
                for key, (value, unit) in figures.items():
                    got[side].setdefault(key, []).append(value)
                    units[key] = unit
    loads = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nbench --compare {ref}: {rounds} alternating rounds of `python -m bench "
          f"{' '.join(passed)}`; medians (min–max); load average now {loads}\n")  # fmt: skip
    print(table(ref, got, units))
    return 0 if got["ref"] and got["this"] else 1
