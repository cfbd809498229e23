"""What a forecast measured: per revision, per backfill, and the replayed statements' latency (issue 26).

Plain frozen data: the measurement (``measure.py``) builds it; the verdict, the chart, the command
and the admin read it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LockHeld:            # a lock the revision's session held on the copy
    mode: str              # "AccessExclusiveLock", ...
    relation: str          # table or index name
    seconds: float         # how long it was seen held (sampled)


@dataclass(frozen=True, kw_only=True)
class RevisionForecast:
    revision: str
    doc: str
    started: float         # seconds since the forecast's replay began
    seconds: float         # duration
    locks: tuple[LockHeld, ...]
    waiting_statements: int    # replayed statements seen waiting on its locks
    longest_wait: float        # seconds, the longest of those waits
    p50_before: float | None   # replayed statements' latency (seconds) in the window before it started
    p99_before: float | None
    wal_bytes: int
    rewritten: tuple[str, ...]       # tables whose relfilenode changed
    size_change: int                 # bytes, all relations of the tables it touches
    replica_lag: float | None        # seconds, when a replica follows the copy; else None
    error: str = ""                  # the revision failed on the copy: its one line


@dataclass(frozen=True, kw_only=True)
class BackfillForecast:
    name: str
    batches: int
    rows: int
    seconds: float
    rows_pending: int
    projected_seconds: float


@dataclass(frozen=True, kw_only=True)
class LatencySample:
    at: float        # seconds since the replay began (when the statement ended)
    seconds: float   # its duration


@dataclass(frozen=True, kw_only=True)
class Forecast:
    database: str                 # display URL of the source (no password)
    workload: str                 # "capture FILE (N statements, D s)" or "the bench writers (default)"
    copy_bytes: int
    copy_seconds: float
    revisions: tuple[RevisionForecast, ...]
    backfills: tuple[BackfillForecast, ...]
    samples: tuple[LatencySample, ...]
