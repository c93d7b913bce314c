"""`test_job` for examples/all_in_one.py: a job with two callbacks and two errbacks.

The port of the Ruby example's `reactor_jobs/jr_job.rb`. The job merges `result` into args and
does some CPU work (a sort: it blocks the node's loop while it runs, as it did in Ruby; see
`{"defer": True}` in reactor_jobs/example_jobs.py for the better way). With `{"fail": True}`
in its args it raises, so the errbacks run; they merge `err`, which the error feedback sees.
"""

from __future__ import annotations

import random
from typing import Any

from jobreactor import job, job_callback, job_errback


@job("test_job")
def test_job(args: dict[str, Any]) -> None:
    print(f"  [node] test_job {args['n']} runs (fail={args['fail']})")
    numbers = [random.random() for _ in range(20_000)]
    numbers.sort()
    args["result"] = f"sorted {len(numbers)} numbers"
    if args.get("fail"):
        raise RuntimeError(f"job {args['n']} was asked to fail")


@job_callback("test_job", "first_callback")
def first_callback(args: dict[str, Any]) -> None:
    print(f"  [node] first callback of job {args['n']}: result={args['result']!r}")
    args["checked"] = True


@job_callback("test_job", "second_callback")
def second_callback(args: dict[str, Any]) -> None:
    print(f"  [node] second callback of job {args['n']}: checked={args['checked']}")


@job_errback("test_job", "first_errback")
def first_errback(args: dict[str, Any]) -> None:
    # `result` was added by the failed attempt, so it is not here (errbacks see the
    # args from before the attempt, plus `error`).
    print(f"  [node] first errback of job {args['n']}: error={args['error']!r}")
    args["err"] = "seen by first_errback"


@job_errback("test_job", "second_errback")
def second_errback(args: dict[str, Any]) -> None:
    print(f"  [node] second errback of job {args['n']}: err={args['err']!r}")
