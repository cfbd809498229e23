"""One worker's pacing decision: how long it waits after a batch, and whether it holds before the next.

It composes the parts apart from the worker's loop (as Shopify's maintenance_tasks compose their
throttle): the operator's throttle (``--max-rows-per-second``, ``--batch-pause``), the worker's
own batch latency (``pacing.Pace``) and the health signals' verdict (``health.Signals``: locks,
vacuum, replica lag, live traffic).
"""
from __future__ import annotations

from dataclasses import dataclass

from calls.backfill import health
from calls.backfill.pacing import Pace


@dataclass(frozen=True, kw_only=True)
class AfterBatch:
    """What a worker does after a batch."""

    wait: float  # seconds before its next batch
    slowed_by: tuple[str, ...]  # the signals that made it wait longer (keys of health.SLOWING_SIGNALS)


class Throttle:
    """One worker's pace: its batch size, its waits, and its holds."""

    def __init__(self, *, pace: Pace, signals: health.Signals, rate: float | None, pause: float,
                 duty_beside_traffic: float = 1.0) -> None:
        self.pace, self.signals, self.rate, self.pause = pace, signals, rate, pause
        # The spec's: beside live traffic, the share of its time a working worker spends on batches.
        self.duty_beside_traffic = duty_beside_traffic
        self.lock_waits_seen = 0

    def after_batch(self, *, scanned: int, span: int, seconds: float) -> AfterBatch:
        """Size the next batch from this one (``span`` ids, ``scanned`` rows in ``seconds``)
        and say how long to wait."""
        self.pace.after_batch(span, seconds)
        wait = self.pause + (scanned / self.rate - seconds if self.rate else 0)
        slowed_by = []
        lock_waits = self.signals.lock_waits.value
        if lock_waits != self.lock_waits_seen:  # sessions waited on a backfill's locks: shorter locks, and a breath
            self.lock_waits_seen = lock_waits
            self.pace.halve()
            slowed_by.append("locks")
        if self.signals.slow.value:  # vacuum on the table: half speed, so that it keeps up
            slowed_by.append("vacuum")
        if self.pace.slow:  # slow batches even at the smallest size: the database is struggling
            slowed_by.append("latency")
        if self.duty_beside_traffic < 1 and self.signals.live.value:
            slowed_by.append("live")
            wait = max(wait, seconds * (1 - self.duty_beside_traffic) / self.duty_beside_traffic)
        if slowed_by:
            wait = max(wait, seconds)
        return AfterBatch(wait=wait, slowed_by=tuple(slowed_by))

    def holds(self, *, index: int, claimed_all: bool) -> bool:
        """Whether worker ``index`` holds before its next batch.

        All hold while replicas lag; the upper half beside live traffic. Once a worker found
        nothing left to claim, live traffic holds none: the rest is short.
        """
        return bool(self.signals.hold.value) or (index >= self.signals.workers_allowed.value and not claimed_all)
