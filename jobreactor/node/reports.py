"""A link's reports: numbered, kept until the distributor acknowledges them, sent again after
a reconnect, split into frames that fit the peer's max_frame_bytes. A DistributorLink (link.py)
owns one; it says when to send (`send`) and when a new report wants a flush (`flush_soon`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from jobreactor.connection import FramedConnection
from jobreactor.errors import LocalProtocolError
from jobreactor.protocol import ReportItem, Reports, encode, encode_split, pack_args

logger = logging.getLogger("jobreactor.node")

# Reports per frame: keeps frames well under max_frame_bytes for ordinary args.
_REPORTS_PER_FRAME = 512


def _reports_frame(chunk: list[tuple[int, ReportItem]]) -> Reports:
    return Reports(chunk[0][0], [item for _, item in chunk])


def _too_large(entry: tuple[int, ReportItem]) -> tuple[int, ReportItem]:
    """A job grew its args past max_frame_bytes: report that instead of args nobody can read."""
    seq, item = entry
    logger.warning(
        "job %s: its final args exceed max_frame_bytes; reported without them", item.job_id
    )
    args = {
        "error": {
            "class": "ReportTooLarge",
            "message": "the job's final args exceed max_frame_bytes; store big results "
            "elsewhere and return a reference",
        }
    }
    return seq, item._replace(args=args)


def wire_safe(value: Any) -> Any:
    """`value` if msgpack can carry it, else its repr."""
    try:
        pack_args({"v": value})
    except TypeError:
        return repr(value)
    return value


class ReportQueue:
    """The reports of one link: numbered, unacknowledged ones kept, sent in frames that fit."""

    def __init__(self, flush_soon: Callable[[], None], max_frame_bytes: int) -> None:
        self._flush_soon = flush_soon
        self._max_frame_bytes = max_frame_bytes
        self._reports: deque[tuple[int, ReportItem]] = deque()  # sent or not, unacknowledged
        self._unsent_from = 0  # index into _reports of the first report not yet sent
        self._seq = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.address = ""  # its distributor's, for the log lines
        # Its distributor left with nothing to hand over (memory storage): reports go nowhere.
        self.outcome_lost = False

    def __len__(self) -> int:
        return len(self._reports)

    def report(
        self,
        job_id: str,
        lease: int,
        outcome: str,
        final: bool,
        args: dict[str, Any],
        completes_batch: str = "",
    ) -> None:
        if self.outcome_lost:  # each of its jobs was named at WARNING when it left
            logger.debug(
                "job %s: %s not reported, distributor %s left (memory storage)",
                job_id,
                outcome,
                self.address,
            )
            return
        if not self._reports:  # `drained` is set exactly while the queue is empty
            self.drained.clear()
        self._seq += 1
        item = ReportItem(job_id, lease, outcome, final, args, completes_batch)
        self._reports.append((self._seq, item))
        self._flush_soon()

    def unacked_ids(self) -> list[tuple[str, int]]:
        return [(item.job_id, item.lease) for _, item in self._reports]

    def take(self) -> list[tuple[int, ReportItem]]:
        """Every unacknowledged report, removed from this link (to send them elsewhere)."""
        taken = list(self._reports)
        self._reports.clear()
        self._unsent_from = 0
        self.drained.set()
        return taken

    def adopt(self, reports: list[tuple[int, ReportItem]]) -> None:
        """Send reports taken from another link, after ours, in their order."""
        for _, item in reports:
            self.report(*item)

    def drop_for(self, job_ids: set[str]) -> None:
        kept = [(seq, item) for seq, item in self._reports if item.job_id not in job_ids]
        self._reports = deque(kept)
        self._unsent_from = min(self._unsent_from, len(self._reports))
        if not kept:
            self.drained.set()

    def acked(self, upto_seq: int) -> None:
        reports = self._reports
        while reports and reports[0][0] <= upto_seq:
            reports.popleft()
            self._unsent_from = max(0, self._unsent_from - 1)
        if not reports:
            self.drained.set()

    async def wait_acked(self, closed: asyncio.Event, timeout: float) -> bool:
        """Until every report is acknowledged, `closed` is set, or `timeout` passes."""
        waiters = [
            asyncio.ensure_future(self.drained.wait()),
            asyncio.ensure_future(closed.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not self._reports

    def resend_all(self) -> None:
        """A new connection: everything unacknowledged goes again, in order."""
        self._unsent_from = 0

    def send(self, conn: FramedConnection) -> None:
        reports = self._reports
        while self._unsent_from < len(reports):
            start = self._unsent_from
            chunk = [
                reports[i] for i in range(start, min(len(reports), start + _REPORTS_PER_FRAME))
            ]
            self._unsent_from += len(chunk)
            for frame in self._encode(chunk):
                conn.send_frame(frame)

    def _encode(self, chunk: list[tuple[int, ReportItem]]) -> list[bytes]:
        try:
            return encode_split(chunk, _reports_frame, self._max_frame_bytes, _too_large)
        except LocalProtocolError:
            pass
        # Some job put a value msgpack can't carry into its args: send that report with the
        # values as text rather than let one bad report block every report after it.
        fixed: list[tuple[int, ReportItem]] = []
        for seq, item in chunk:
            try:
                encode(Reports(seq, [item]))
            except LocalProtocolError:
                logger.warning(
                    "job %s: its final args hold values msgpack can't carry; sent as text",
                    item.job_id,
                )
                args = {k: wire_safe(v) for k, v in item.args.items()}
                item = item._replace(args=args)
            fixed.append((seq, item))
        return encode_split(fixed, _reports_frame, self._max_frame_bytes, _too_large)
