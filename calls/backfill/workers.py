"""One worker's loop on a run: claim batches, process each, halve one that fails, until none are left.

A worker is a thread or a forked process (``supervisor.py`` starts them); either way it tells
the supervisor what it did through typed messages (``BatchReport``, ``WorkerFailed``), paces
itself with its ``throttle.Throttle`` and follows the operator's brake (``brake.obey``). A worker
process stops after its batch if the invoking process is killed: its batches wait for a rerun.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import sqlalchemy as sa
from django.conf import settings

from calls.backfill import brake, health
from calls.backfill.errors import RowFailed
from calls.backfill.options import BackfillOptions
from calls.backfill.pacing import Pace
from calls.backfill.runs import BatchFailed, Run, RunStopped
from calls.backfill.throttle import Throttle
from calls.models import BackfillStatus
from schema_engine import database
from schema_engine.errors import LOCK_NOT_AVAILABLE, QUERY_CANCELED, first_line, sqlstate

_FORK = multiprocessing.get_context("fork")
# A batch that fails with one of these is halved and retried: the cause is its size or bad luck,
# not its rows (statement_timeout, a deadlock, lock_timeout).
RETRIED_SQLSTATES = {QUERY_CANCELED, "40P01", LOCK_NOT_AVAILABLE}
# How often a batch of one row is retried before the run fails, naming the row.
SINGLE_ROW_TRIES = 3


@dataclass(frozen=True, kw_only=True)
class BatchReport:
    """A worker's message: one batch committed."""

    scanned: int
    changed: int
    seconds: float
    slowed_by: tuple[str, ...] = ()  # the health signals that made the worker wait after it


@dataclass(frozen=True, kw_only=True)
class WorkerFailed:
    """A worker's message: how it failed,
    in words that survive the trip from a process (an exception may not pickle)."""

    kind: str  # the exception's class name
    line: str
    cause: BaseException | None = field(default=None, compare=False)  # the exception itself, from a thread

    @classmethod
    def of(cls, error: BaseException) -> WorkerFailed:
        return cls(kind=type(error).__name__, line=first_line(error), cause=error)


WorkerMessage = BatchReport | WorkerFailed


@dataclass(frozen=True)
class Crew:
    """What the supervisor shares with its workers, threads or forked processes alike."""

    signals: health.Signals = field(default_factory=health.Signals)
    # The workers are to stop (after their batch).
    stop: multiprocessing.synchronize.Event = field(default_factory=_FORK.Event)
    # Set once the run's total has its snapshot: workers may commit.
    counting: multiprocessing.synchronize.Event = field(default_factory=_FORK.Event)
    # A worker found nothing left to claim: workers held for live traffic need not wait.
    claimed_all: multiprocessing.synchronize.Event = field(default_factory=_FORK.Event)


class Worker:
    """One worker on a run: its loop, its pace, and the failures it retries."""

    def __init__(self, *, run: Run, options: BackfillOptions, crew: Crew, send: Callable[[WorkerMessage], None],
                 rate: float | None, index: int = 0, parent_pid: int | None = None) -> None:
        self.run, self.crew, self.send = run, crew, send
        self.index = index  # this worker's number: live traffic holds the upper half (Throttle.holds)
        self.parent_pid = parent_pid  # set in a worker process: the invoking process's
        self.throttle = Throttle(pace=Pace(options.batch_size, settings.BACKFILL_BATCH_SECONDS),
                                 signals=crew.signals, rate=rate, pause=options.pause,
                                 duty_beside_traffic=run.spec.duty_beside_traffic)
        self.single_row_failures: dict[int, int] = {}  # row id -> tries that failed, in this worker

    def work(self) -> None:
        """Batches left waiting (by killed workers) first, then new ones, until none are left; report a failure."""
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - handed to the supervisor, which fails the run with it
            self.send(WorkerFailed.of(exc))
            self.crew.stop.set()

    def _work(self) -> None:
        if settings.BACKFILL_NICE:
            # Below the host's other work: counting tokens yields the CPU to live requests first.
            # On Linux this sets the calling thread's priority: the worker's, whichever kind it is.
            os.nice(settings.BACKFILL_NICE)
        while not self.crew.counting.wait(0.5):  # the run's total is being counted: its snapshot comes first
            if self.orphaned():
                return
        with self.run.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Not waiting for the WAL flush is safe here: a crash can lose only the last
                # commits, the WAL's tail; a batch whose commit is lost keeps its row in
                # backfill_batches and is redone. Reset as the connection is given back, and
                # refused through a pooler, where the application's writes would inherit them.
                with conn.begin():
                    database.set_session(conn, {"synchronous_commit": "off",
                                                "lock_timeout": str(settings.BACKFILL_LOCK_TIMEOUT),
                                                "statement_timeout": str(settings.BACKFILL_STATEMENT_TIMEOUT)})
            self.drain(conn)
            while not self.crew.stop.is_set():
                try:
                    self.hold_while_unhealthy()
                    claimed = self.run.claim(conn, Run.CLAIM_BATCHES, self.throttle.pace.size)
                except RunStopped as stopped:
                    if self.obey(stopped.status):
                        continue
                    return
                if not claimed:
                    self.crew.claimed_all.set()
                    break
                for batch_id in claimed:
                    if self.crew.stop.is_set():
                        return  # unprocessed batches wait in backfill_batches for the next worker
                    self.step(conn, batch_id)
            self.drain(conn)  # batches a worker that died meanwhile left behind

    def drain(self, conn: sa.Connection) -> None:
        while not self.crew.stop.is_set() and self.step(conn):
            pass

    def step(self, conn: sa.Connection, batch_id: int | None = None) -> bool:
        """Process one batch, then wait as the throttle says; return whether there was one."""
        if self.orphaned():
            self.crew.stop.set()
            return False
        self.hold_while_unhealthy()
        started = time.monotonic()
        try:
            done = self.run.process_batch(conn, batch_id)
        except BatchFailed as failed:
            self.retry_smaller(conn, failed)
            return True
        if done is None:
            return False
        seconds = time.monotonic() - started
        then = self.throttle.after_batch(scanned=done.scanned, span=done.span, seconds=seconds)
        self.send(BatchReport(scanned=done.scanned, changed=done.changed, seconds=seconds, slowed_by=then.slowed_by))
        if done.status != BackfillStatus.RUNNING and not self.obey(done.status):
            return False
        if then.wait > 0:
            self.crew.stop.wait(then.wait)
        return True

    def hold_while_unhealthy(self) -> None:
        """Wait before the next batch while the throttle holds this worker (replicas lag, or live traffic)."""
        while (self.throttle.holds(index=self.index, claimed_all=self.crew.claimed_all.is_set())
               and not self.crew.stop.is_set()):
            self.crew.stop.wait(health.POLL_SECONDS)
            if self.orphaned():
                self.crew.stop.set()

    def retry_smaller(self, conn: sa.Connection, failed: BatchFailed) -> None:
        """Halve a batch that hit a timeout or a deadlock (it waits, split, for the next step); fail on one row.

        A batch of one row is retried ``SINGLE_ROW_TRIES`` times; then the run fails naming the row,
        whose batch waits in backfill_batches for the run that resumes after the fix.
        """
        if sqlstate(failed.cause) not in RETRIED_SQLSTATES:
            raise failed.cause
        if failed.hi - failed.lo > 1:
            self.run.split(conn, failed)
            return
        tries = self.single_row_failures[failed.hi] = self.single_row_failures.get(failed.hi, 0) + 1
        if tries >= SINGLE_ROW_TRIES:
            raise RowFailed(f"row {failed.hi} of {self.run.spec.table} failed {tries} times: "
                            f"{first_line(failed.cause)}") from failed.cause

    def obey(self, status: str) -> bool:
        """Follow the operator's brake (``brake.obey``); return whether to go on."""
        return brake.obey(self.run, status, stop=self.crew.stop, orphaned=self.orphaned)

    def orphaned(self) -> bool:
        """In a worker process: whether the invoking process was killed (stop too: batches wait for a rerun)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid
