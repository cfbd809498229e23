"""How to run a backfill, and what it returns: the options (checked on creation) and each backfill's result."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from calls.backfill.errors import InvalidBackfillOption

# Bounds of the options: a batch is one transaction (a million rows is already minutes of locks),
# a worker is a process (more than the cores only queue), a throttle below a row a second never ends.
MAX_BATCH_SIZE = 1_000_000
MAX_WORKERS = 64
MIN_ROWS_PER_SECOND = 1.0
MAX_PAUSE_SECONDS = 3600.0


@dataclass(frozen=True)
class BackfillOptions:
    """How to run a backfill; every value is checked on creation (``InvalidBackfillOption``)."""

    batch_size: int | None = None  # rows per batch; None: sized to the target duration (calls/backfill/pacing.py)
    recompute: bool = False
    dry_run: bool = False
    workers: int | None = None  # None: chosen from the cores and the database's headroom (pacing.choose_workers)
    max_rows_per_second: float | None = None  # for the whole run (split across workers)
    pause: float = 0.0  # seconds each worker waits between batches
    stale_after: float = 120.0  # seconds without a heartbeat before a running run counts as dead

    def __post_init__(self) -> None:
        def refuse(option: str, value: object, allowed: str) -> None:
            raise InvalidBackfillOption(f"{option} {value} is out of range: give {allowed}")

        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            refuse("--batch-size", self.batch_size, f"a whole number from 1 to {MAX_BATCH_SIZE:,}")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            refuse("--workers", self.workers, f"a whole number from 1 to {MAX_WORKERS}")
        rate = self.max_rows_per_second
        if rate is not None and not (math.isfinite(rate) and rate >= MIN_ROWS_PER_SECOND):
            refuse("--max-rows-per-second", rate, f"a number of rows a second, at least {MIN_ROWS_PER_SECOND:g}")
        if not (math.isfinite(self.pause) and 0 <= self.pause <= MAX_PAUSE_SECONDS):
            refuse("--batch-pause", self.pause, f"seconds from 0 to {MAX_PAUSE_SECONDS:g}")
        if not (math.isfinite(self.stale_after) and self.stale_after >= 0):  # 0: any running run is dead now
            refuse("--stale-after", self.stale_after, "a number of seconds, 0 or more")

    def rate_per_worker(self, workers: int) -> float | None:
        """The throttle each of ``workers`` keeps to, so that together they keep to ``max_rows_per_second``."""
        return self.max_rows_per_second / workers if self.max_rows_per_second else None


@dataclass(frozen=True, kw_only=True)
class BackfillResult:
    """What one backfill did in this invocation (``events.BackfillFinished`` carries it as it ends)."""

    backfill: str
    run_id: int | None
    scanned: int
    changed: int
    seconds: float
    dry_run: bool
    joined: bool
    resumed_from: int | None
    complete: bool
    slowed: dict[str, int] = field(default_factory=dict)  # health signal -> batches it slowed ("locks", "vacuum", ...)
    held_seconds: float = 0.0  # how long the workers held for replica lag
    worst_replica_lag: float = 0.0  # seconds: the slowest replica's, the worst seen during the run

