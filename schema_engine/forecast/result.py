"""What a forecast found: per pending revision, per declared backfill, and the replayed statements' latencies.

The contract between the forecast's measuring (``run.py``, ``measure.py``) and what shows it (the
command's table and verdict, ``--json``, the chart): frozen, keyword-only, plain values only.
"""
from __future__ import annotations

from dataclasses import dataclass

PHYSICAL = "physical"  # the copy a forecast ran on, when it was the whole primary (pg_basebackup)


@dataclass(frozen=True, kw_only=True)
class LockHeld:
    """A lock the revision's session held on the copy."""

    mode: str  # "AccessExclusiveLock", ...
    relation: str  # table or index name
    seconds: float  # how long it was seen held (sampled)


@dataclass(frozen=True, kw_only=True)
class RevisionForecast:
    """One pending revision applied to the copy under the replayed traffic, and what it did there."""

    revision: str
    doc: str
    started: float  # seconds since the forecast's replay began
    seconds: float  # duration
    locks: tuple[LockHeld, ...]
    waiting_statements: int  # replayed statements seen waiting on its locks
    longest_wait: float  # seconds, the longest of those waits
    p50_before: float | None  # replayed statements' latency (seconds) in the window before it started
    p99_before: float | None
    wal_bytes: int
    rewritten: tuple[str, ...]  # tables whose relfilenode changed
    size_change: int  # bytes, all relations of the tables it touches
    replica_lag: float | None  # seconds, when a replica follows the copy; else None
    error: str = ""  # the revision failed on the copy: its one line


@dataclass(frozen=True, kw_only=True)
class BackfillForecast:
    """A declared backfill's sample of batches on the copy, and its whole run projected from it."""

    name: str
    batches: int
    rows: int
    seconds: float
    rows_pending: int
    projected_seconds: float


@dataclass(frozen=True, kw_only=True)
class LatencySample:
    """One replayed statement's latency."""

    at: float  # seconds since the replay began (when the statement ended)
    seconds: float  # its duration


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """A whole forecast: the copy, the traffic, and what each revision and backfill did under it."""

    database: str  # display URL of the source (no password)
    workload: str  # "capture FILE (N statements, D s)" or "the bench writers (default)"
    copy_bytes: int
    copy_seconds: float
    revisions: tuple[RevisionForecast, ...]
    backfills: tuple[BackfillForecast, ...]
    samples: tuple[LatencySample, ...]
    # Which copy: PHYSICAL, or a logical copy of chosen tables ("logical: conversation_history ≤ 100,000 rows")
    copy: str = PHYSICAL
    # What the traffic did on the copy: its statements, how many failed there, a few of their errors.
    traffic_statements: int | None = None
    traffic_failed: int | None = None
    traffic_errors: tuple[str, ...] = ()
