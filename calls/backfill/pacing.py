"""How fast a backfill goes: how many workers, how big each batch, and how long to wait between batches.

Fast on an idle database, by default: as many workers as this host has cores (fewer if the
database has few connections to spare), each batch sized so that it takes the target duration
(``BACKFILL_BATCH_SECONDS``). Short batches keep row locks short, and a batch is the unit the
operator's brake and the health signals (``calls/backfill/health.py``) act on. Gentle on a busy
database, by measurement: the health signals shrink the batches, add waits, or hold the workers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy as sa

from calls.backfill.sql import driver_sql

INITIAL_BATCH_SIZE = 1000
MIN_BATCH_SIZE = 50
MAX_AUTO_BATCH_SIZE = 50_000
MAX_AUTO_WORKERS = 8
# Connections left to the application per worker that could start: the backfill takes at most
# half of what is free, and never the last few.
RESERVED_CONNECTIONS = 5
# A batch over this many times the target is slow: the progress line says so.
SLOW_BATCH_FACTOR = 2.0


@dataclass(frozen=True)
class WorkerChoice:
    workers: int
    why: str  # for the start line: "2 cores", "4 cores, 6 free connections"


def choose_workers(conn: sa.Connection) -> WorkerChoice:
    """The workers for this host's cores and the database's free connections (on SQLite one: one writer at a time)."""
    if conn.dialect.name != "postgresql":
        return WorkerChoice(workers=1, why="SQLite: one writer at a time")
    (free,), = driver_sql(conn, "SELECT current_setting('max_connections')::int "
                                "- current_setting('superuser_reserved_connections')::int "
                                "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')", ())
    conn.rollback()
    return worker_choice(os.cpu_count() or 1, free)


def worker_choice(cores: int, free_connections: int) -> WorkerChoice:
    """As many workers as this host has cores, but at most half the database's free connections (less a reserve).

    Counting tokens is this host's CPU work; writing is the database's. How busy the database
    is, the health signals measure while the run goes.
    """
    spare = max(0, free_connections - RESERVED_CONNECTIONS) // 2
    workers = max(1, min(cores, spare, MAX_AUTO_WORKERS))
    why = f"{cores} core{'s' if cores != 1 else ''}"
    if spare < min(cores, MAX_AUTO_WORKERS):
        why += f", {free_connections} free connection{'s' if free_connections != 1 else ''} on the database"
    return WorkerChoice(workers=workers, why=why)


class Pace:
    """One worker's batch size, sized to the target duration (or fixed by ``--batch-size``), and its waits.

    After each batch the size moves toward the ids the worker did per second times the target,
    by at most a factor of two, so that one odd batch does not swing it. A fixed size is the
    ceiling: a health signal may halve it, and it grows back.
    """

    def __init__(self, fixed_size: int | None, target_seconds: float) -> None:
        self.fixed = fixed_size
        self.target = target_seconds
        self.ceiling = fixed_size or MAX_AUTO_BATCH_SIZE
        self.floor = min(MIN_BATCH_SIZE, self.ceiling)
        self.size = fixed_size or INITIAL_BATCH_SIZE
        self.last_seconds = 0.0

    def after_batch(self, span: int, seconds: float) -> None:
        """Size the next batch from the last one: ``span`` ids in ``seconds``."""
        self.last_seconds = seconds
        if span <= 0 or seconds <= 0:
            return
        if self.fixed is not None and seconds <= self.target and self.size == self.fixed:
            return  # the operator's size, and it is within the target
        ideal = span / seconds * self.target
        self._set(min(self.size * 2, max(self.size / 2, ideal)))

    def halve(self) -> None:
        """Shorter batches, shorter row locks: sessions waited on the backfill's locks."""
        self._set(self.size / 2)

    @property
    def slow(self) -> bool:
        """The last batch took over twice the target at the smallest size: the database is slow, wait too."""
        return self.size <= self.floor and self.last_seconds > SLOW_BATCH_FACTOR * self.target

    def _set(self, size: float) -> None:
        self.size = int(max(self.floor, min(self.ceiling, size)))
