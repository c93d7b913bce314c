"""The app side, as a web view would have it: enqueue a job, let its feedback record the end.

Feedbacks run on the reactor's thread (or inline, in eager mode), so what they record is kept
under a lock.
"""

from __future__ import annotations

import threading
from typing import Any

from jobreactor import JR, JobHandle

_lock = threading.Lock()
ORDER_STATUS: dict[str, str] = {}


def _set(order: str, status: str) -> None:
    with _lock:
        ORDER_STATUS[order] = status


def status_of(order: str) -> str | None:
    with _lock:
        return ORDER_STATUS.get(order)


def _charged(args: dict[str, Any]) -> None:
    if "charge_id" in args:
        _set(args["order"], f"paid ({args['charge_id']})")
    else:  # the job cancelled itself: a success feedback with the args it was given
        _set(args["order"], "nothing to charge")


def _charge_failed(args: dict[str, Any]) -> None:
    _set(args["order"], f"failed after {args['tries']} tries: {args['error']['message']}")


def place_order(order: str, email: str, cents: int) -> JobHandle | None:
    """Charge the card in the background; the order's status follows the feedbacks."""
    _set(order, "charging")
    return JR.enqueue(
        "charge_card",
        {"order": order, "email": email, "cents": cents},
        success=_charged,
        error=_charge_failed,
    )


def start_cleanup(every_s: float) -> JobHandle | None:
    """A periodic job that stops itself after three runs."""
    return JR.enqueue("cleanup", {}, {"period": every_s})
