"""Jobs for the two-distributors / three-nodes example (the Ruby example's jobs/jobs.rb).

Every node loads this directory (`job_directory = "jobs"` in node1/2/3.toml).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from jobreactor import job


@job("success_job")
def success_job(args: dict[str, Any]) -> None:
    # A little CPU work (a few milliseconds) so the jobs spread over the three nodes. It runs on
    # the node's loop; enqueue with {"defer": True} to run it in the node's thread pool instead.
    digest = str(args["i"]).encode()
    for _ in range(5_000):
        digest = hashlib.sha256(digest).digest()
    args["digest"] = digest.hex()[:16]
    # With merge_job_itself_to_args the record is in args["job_itself"]: which node runs the
    # job, which attempt this is. Without it, the node process's pid tells the nodes apart
    # (run.sh prints which pid is which node). It goes back to the app in the feedback.
    itself = args.get("job_itself") or {}
    args["ran_on"] = itself.get("node") or f"node pid {os.getpid()}"


@job("error_job")
def error_job(args: dict[str, Any]) -> None:
    # Like the Ruby example's call to an undefined method: every attempt raises NameError; the
    # error feedback fires once, after the last attempt (`max_attempt`).
    args["never_seen"] = undefined_name  # type: ignore[name-defined]  # noqa: F821
