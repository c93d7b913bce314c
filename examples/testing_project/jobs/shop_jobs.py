"""The shop's jobs, as a node loads them (`job_directory = "jobs"`)."""

from __future__ import annotations

from typing import Any

from jobreactor import CancelJob, job, job_callback, job_errback


@job("charge_card")
def charge_card(args: dict[str, Any]) -> None:
    if args["cents"] <= 0:
        raise CancelJob  # nothing to do: no retry, the success feedback gets the args as given
    if args["email"].endswith("@declined.example"):
        raise ValueError("card declined")
    if args["email"].endswith("@flaky.example") and args.get("tries", 0) < 1:
        raise ConnectionError("gateway timeout")  # fails once, then works
    args["charge_id"] = f"ch_{args['order']}"


@job_callback("charge_card", "receipt")
def send_receipt(args: dict[str, Any]) -> None:
    args["receipt"] = f"receipt for {args['order']} sent to {args['email']}"


@job_errback("charge_card", "count")
def count_try(args: dict[str, Any]) -> None:
    # What an errback adds stays in the args of the next attempt, and of the error feedback.
    args["tries"] = args.get("tries", 0) + 1


@job("cleanup")
def cleanup(args: dict[str, Any]) -> None:
    args["runs"] = args.get("runs", 0) + 1
    if args["runs"] > 3:
        raise CancelJob  # a periodic job stops itself
