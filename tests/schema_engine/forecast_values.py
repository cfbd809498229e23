"""Forecasts built as plain data for the verdict, chart and command tests (what ``measure.forecast`` returns)."""
from __future__ import annotations

from typing import Any

from schema_engine.forecast.result import BackfillForecast, Forecast, LatencySample, LockHeld, RevisionForecast


def revision(name: str = "004_indexes", **changes: Any) -> RevisionForecast:
    """A revision that stayed within every default limit, with ``changes``."""
    values: dict[str, Any] = dict(
        revision=name, doc="Index the messages by conversation", started=10.0, seconds=12.5,
        locks=(LockHeld(mode="ShareUpdateExclusiveLock", relation="conversation_history", seconds=12.4),),
        waiting_statements=0, longest_wait=0.0, p50_before=0.002, p99_before=0.011, wal_bytes=96 * 1024 * 1024,
        rewritten=(), size_change=80 * 1024 * 1024, replica_lag=0.4)
    return RevisionForecast(**{**values, **changes})


def forecast(*revisions: RevisionForecast, samples: int = 0, backfills: tuple[BackfillForecast, ...] = ()) -> Forecast:
    """A forecast of ``revisions`` with ``samples`` latencies spread over the replay (every 50th slow)."""
    return Forecast(database="postgresql://app:***@db.internal:5432/app", workload="the bench writers (default)",
                    copy_bytes=3 * 1024 ** 3, copy_seconds=41.2, revisions=revisions, backfills=backfills,
                    samples=tuple(LatencySample(at=0.1 * (i + 1), seconds=2.5 if i % 50 == 49 else 0.002 + i * 1e-6)
                                  for i in range(samples)))
