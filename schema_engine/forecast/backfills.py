"""The backfills the pending revisions declare, forecast from a sample of batches run on the copy.

The engine knows no backfill (``gate.py``): the app that owns the backfill engine registers how to
run a bounded sample of one (``register_backfill_sampler``; ``calls`` does, in its ``ready()``,
through its backfill engine's public functions). The sample's rate, rows per second, projects the
time the rows still pending would take, at the pace the engine chose on the copy under the replay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import sqlalchemy as sa
from alembic.script import Script

from schema_engine import gate
from schema_engine.errors import ForecastUnavailable
from schema_engine.forecast.result import BackfillForecast


@dataclass(frozen=True, kw_only=True)
class BackfillSample:
    """What a sampler did: ``batches`` batches, ``rows`` rows in them, in ``seconds``; ``rows_pending`` before it."""

    batches: int
    rows: int
    seconds: float
    rows_pending: int


# sampler(url, name, batches) runs up to ``batches`` batches of backfill ``name`` on ``url``.
BackfillSampler = Callable[[sa.URL, str, int], BackfillSample]
_sampler: list[BackfillSampler] = []


def register_backfill_sampler(sampler: BackfillSampler) -> None:
    """Name how a forecast runs a sample of a backfill's batches (called from an app's ``ready()``)."""
    _sampler[:] = [sampler]


def declared(scripts: Iterable[Script]) -> tuple[str, ...]:
    """The backfills ``scripts`` declare (``requires_backfills``), each once, in their order."""
    return tuple(dict.fromkeys(name for script in scripts for name in gate.requires_backfills(script)))


def forecast_backfill(url: sa.URL, name: str, *, batches: int) -> BackfillForecast:
    """Run ``batches`` batches of backfill ``name`` on ``url`` (the copy) and project its whole run from them."""
    if not _sampler:
        raise ForecastUnavailable(f"the pending revisions need the {name} backfill, and no installed app registers "
                                  "how to run a sample of it")
    if batches < 1:
        raise ForecastUnavailable(f"a backfill's sample needs at least one batch, not {batches}")
    sample = _sampler[0](url, name, batches)
    rate = sample.rows / sample.seconds if sample.rows and sample.seconds > 0 else 0.0
    projected = sample.rows_pending / rate if rate else 0.0
    return BackfillForecast(name=name, batches=sample.batches, rows=sample.rows, seconds=sample.seconds,
                            rows_pending=sample.rows_pending, projected_seconds=projected)
