"""A bounded sample of a backfill's batches, for the schema engine's forecast (on its copy, never the primary).

The forecast knows no backfill: ``CallsConfig.ready`` registers ``sample`` with it
(``schema_engine.forecast.backfills.register_backfill_sampler``). The sample is a real run through
the backfill engine's public functions (``backfill_context``, with the pace it chooses there),
stopped by the operator's brake (``control.cancel``) once it has reported ``batches`` batches, so
the rate is the engine's own under the copy's traffic.
"""
from __future__ import annotations

import time

import sqlalchemy as sa

from calls import backfill
from calls.backfill import control
from schema_engine.errors import ForecastUnavailable
from schema_engine.forecast.backfills import BackfillSample
from schema_engine.progress import Event

CANCELLED_BY = "forecast (sample done)"


def sample(url: sa.URL, name: str, batches: int) -> BackfillSample:
    """Run backfill ``name`` on ``url`` until ``batches`` batches are done (or it ends); say what it did."""
    try:
        pending = backfill.pending_rows(url=url, only=(name,))[name]
        scanned: dict[str, int] = {}  # each part's rows so far (a fill over several tables has a run per table)
        seen = [0]

        def hear(event: Event) -> None:
            if not isinstance(event, backfill.BackfillProgress) or event.scanned == scanned.get(event.backfill, 0):
                return  # a note changed, no batch done
            scanned[event.backfill] = event.scanned
            seen[0] += 1
            if seen[0] == batches:
                control.cancel(by=CANCELLED_BY, only=(name,), url=url)

        started = time.monotonic()
        try:
            backfill.backfill_context(only=(name,), url=url, reporter=hear)
        except backfill.BackfillCancelled:
            pass  # the sample's own brake
        seconds = time.monotonic() - started
    except backfill.BackfillError as exc:
        raise ForecastUnavailable(f"the {name} backfill could not run its sample on the copy: {exc}") from exc
    return BackfillSample(batches=seen[0], rows=sum(scanned.values()), seconds=seconds, rows_pending=pending)
