"""What the two hostile-peer benches share (bench/attacks.py, issue 10; bench/attacks2.py,
issue 18): the target process driven over stdin, reading its memory, and the command line.

A target is a distributor with an in-process probe node, in its own process, started from the
attack script's path with `--target` (by path, not `-m`: `--code DIR`, first on the path, may
hold a `bench` of its own), answering one line per command on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Results = dict[str, dict[str, Any]]


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    """`field` of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class TargetProcess:
    """`python <script> --target [extra...]`, importing `jobreactor` from `code` if given."""

    def __init__(self, script: str, code: Path | None, log: Path, extra: list[str]) -> None:
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(code)] * (code is not None) + [str(ROOT), self.env.get("PYTHONPATH", "")]
        )
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(script).resolve()), "--target", *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.env,
            cwd=log.parent,
            text=True,
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline()  # what the target announces: its port

    def ask_line(self, command: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def rss_mb(self, field: str = "VmRSS") -> float:
        return rss_kb(self.proc.pid, field) / 1024

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def run_each(only: list[str], one: Callable[[str, Path], dict[str, Any]]) -> Results:
    """`one(name, tmp)` for every attack in `only`, in a shared temporary directory."""
    results: Results = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        for name in only:
            results[name] = one(name, Path(tmp_dir))
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def main(doc: str, attacks: list[str], target: Callable[[argparse.Namespace], None],
         run: Callable[[Path | None, list[str]], Results]) -> None:  # fmt: skip
    """The command line of an attack script: `--code DIR`, `--only NAME...`, and the table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help="directory holding the jobreactor package")
    parser.add_argument("--only", nargs="*", choices=attacks, default=attacks)
    args = parser.parse_args()
    if args.target:
        target(args)
        return
    load = os.getloadavg()
    results = run(args.code, args.only)
    print(f"load average before: {load[0]:.2f}")
    print(f"| attack | measure | value ({args.code or 'this tree'}) |")
    print("|---|---|---|")
    for name, figures in results.items():
        for measure, value in figures.items():
            print(f"| {name} | {measure} | {value} |")
