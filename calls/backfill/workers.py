"""This invocation's workers on a run: the batch loop, its pace, progress, and the processes.

One worker is a thread; several are forked processes (``--workers``, or as many as
``pacing.choose_workers`` picks), since counting tokens is CPU-bound Python around tiktoken and
threads would take turns on the GIL between tiktoken's calls. Worker processes report each
batch to the invoking process, which shows one progress, reads the database's health
(``health.HealthWatch``) and follows the operator's brake; they stop after their batch if it is
killed. A new run's total is counted beside the workers.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import sqlalchemy as sa
from django.conf import settings

from calls.backfill import health
from calls.backfill.batching import next_bounds
from calls.backfill.errors import BackfillCancelled, BackfillFailed, BackfillInterrupted, RowFailed
from calls.backfill.options import (
    BackfillOptions,
    BackfillProgress,
    BackfillResult,
    BackfillStart,
    ProgressCallback,
    StartCallback,
)
from calls.backfill.pacing import INITIAL_BATCH_SIZE, SLOW_BATCH_FACTOR, Pace, WorkerChoice, choose_workers
from calls.backfill.runs import CANCELLED, PAUSED, RUNNING, SUCCEEDED, BatchFailed, Run, RunStopped
from calls.backfill.specs import Backfill, count_needing
from schema_engine import database
from schema_engine.errors import LOCK_NOT_AVAILABLE, QUERY_CANCELED, first_line, sqlstate

_FORK = multiprocessing.get_context("fork")
# How often a paused worker, and the invoking process, look whether the run was resumed or cancelled.
BRAKE_POLL_SECONDS = 1.0
# A batch that fails with one of these is halved and retried: the cause is its size or bad luck,
# not its rows (statement_timeout, a deadlock, lock_timeout).
RETRIED_SQLSTATES = {QUERY_CANCELED, "40P01", LOCK_NOT_AVAILABLE}
# How often a batch of one row is retried before the run fails, naming the row.
SINGLE_ROW_TRIES = 3


class WorkerError(Exception):
    """An error a worker process reported (exceptions themselves may not survive pickling)."""

    def __init__(self, kind: str, line: str) -> None:
        super().__init__(line)
        self.kind, self.line = kind, line


class Workers:
    """The workers this invocation puts on a run, and what they did."""

    def __init__(self, run: Run, options: BackfillOptions, count: int, on_progress: ProgressCallback | None) -> None:
        self.run, self.options, self.on_progress = run, options, on_progress
        self.rate = options.rate_per_worker(count)
        self.signals = health.Signals()
        self.watch = health.HealthWatch(run.spec.table, self.signals, settings.BACKFILL_MAX_REPLICA_LAG, count)
        self.pace = Pace(options.batch_size, settings.BACKFILL_BATCH_SECONDS)  # each worker process has its own
        self.lock_waits_seen = 0
        self.index = 0  # this worker's number: live traffic holds the upper half (health.Signals.workers_allowed)
        self.slowed: collections.Counter[str] = collections.Counter()  # batches each signal slowed
        self.total: int | None = run.rows_total
        self.scanned = self.changed = 0
        self.lock = threading.Lock()
        self.stop = _FORK.Event()  # seen by worker threads and forked worker processes alike
        self.counting = _FORK.Event()  # set once the total's snapshot is taken: workers may commit
        self.claimed_all = _FORK.Event()  # a worker found nothing left to claim: held workers need not wait
        self.errors: list[BaseException] = []
        self.report = self.account  # a worker process reports to its parent instead
        self.parent_pid: int | None = None  # set in a worker process
        self.note: str | None = None  # why the run is slower or stopped, for the progress line
        self.single_row_failures: dict[int, int] = {}  # row id -> tries that failed, in this worker

    def count(self) -> None:
        """Count the run's total (a thread beside the workers); let the workers go once its snapshot is taken."""
        try:
            total = self.run.count_total(on_snapshot=self.counting.set)
            if total is not None:
                with self.lock:
                    self.total = total
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, as a worker's error is
            self.errors.append(exc)
            self.stop.set()
        finally:
            self.counting.set()

    def work(self) -> None:
        """One worker: batches left waiting (by killed workers) first, then new ones, until none are left."""
        try:
            if settings.BACKFILL_NICE:
                # Below the host's other work: counting tokens yields the CPU to live requests first.
                # On Linux this sets the calling thread's priority: the worker's, whichever kind it is.
                os.nice(settings.BACKFILL_NICE)
            while not self.counting.wait(0.5):  # the run's total is being counted: its snapshot comes first
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
                while not self.stop.is_set():
                    try:
                        self.hold_while_unhealthy()
                        claimed = self.run.claim(conn, Run.CLAIM_BATCHES, self.pace.size)
                    except RunStopped as stopped:
                        if self.obey(stopped.status):
                            continue
                        return
                    if not claimed:
                        self.claimed_all.set()
                        break
                    for batch_id in claimed:
                        if self.stop.is_set():
                            return  # unprocessed batches wait in backfill_batches for the next worker
                        self.step(conn, batch_id)
                self.drain(conn)  # batches a worker that died meanwhile left behind
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
            self.errors.append(exc)
            self.stop.set()

    def drain(self, conn: sa.Connection) -> None:
        while not self.stop.is_set() and self.step(conn):
            pass

    def step(self, conn: sa.Connection, batch_id: int | None = None) -> bool:
        """Process one batch, size the next and wait as the pace and the health signals say; return whether there was one."""
        if self.orphaned():
            self.stop.set()
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
        self.pace.after_batch(done.span, seconds)
        wait = self.options.pause + (done.scanned / self.rate - seconds if self.rate else 0)
        slowed_by = []  # the signals that make this worker wait after this batch
        lock_waits = self.signals.lock_waits.value
        if lock_waits != self.lock_waits_seen:  # sessions waited on a backfill's locks: shorter locks, and a breath
            self.lock_waits_seen = lock_waits
            self.pace.halve()
            slowed_by.append("locks")
        if self.signals.slow.value:  # vacuum on the table: half speed, so that it keeps up
            slowed_by.append("vacuum")
        if self.pace.slow:  # slow batches even at the smallest size: the database is struggling
            slowed_by.append("latency")
        if slowed_by:
            wait = max(wait, seconds)
        self.report(done.scanned, done.changed, seconds, tuple(slowed_by))
        if done.status != RUNNING and not self.obey(done.status):
            return False
        if wait > 0:
            self.stop.wait(wait)
        return True

    def hold_while_unhealthy(self) -> None:
        """Wait before the next batch while the invoking process holds the workers (replicas lag), or this one (live traffic)."""
        while (self.signals.hold.value or (self.index >= self.signals.workers_allowed.value
                                           and not self.claimed_all.is_set())) and not self.stop.is_set():
            self.stop.wait(health.POLL_SECONDS)
            if self.orphaned():
                self.stop.set()

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
        """Follow the operator's brake: wait while the run is paused; return whether to go on (not if cancelled)."""
        while status == PAUSED and not self.stop.is_set():
            self.stop.wait(BRAKE_POLL_SECONDS)
            if self.orphaned():
                break
            status = self.run.status()
        if status != RUNNING or self.orphaned():
            self.stop.set()
        return not self.stop.is_set()

    def orphaned(self) -> bool:
        """In a worker process: whether the invoking process was killed (stop too: batches wait for a rerun)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def account(self, scanned: int, changed: int, seconds: float, slowed_by: tuple[str, ...] = ()) -> None:
        with self.lock:
            self.scanned += scanned
            self.changed += changed
            self.slowed.update(slowed_by)
            if seconds > SLOW_BATCH_FACTOR * self.pace.target:
                self.watch.note_slow_batch(seconds, self.pace.target)
            self._progress()

    def watch_brake(self) -> None:
        """In the invoking process: say on the progress line when the run is paused (and by whom), or goes on."""
        state = self.run.control_state()
        note = (f"paused by {state.paused_by} at {state.paused_at:%Y-%m-%d %H:%M:%S}; waiting: resume with "
                "'manage.py backfill_context --resume' or the admin" if state.status == PAUSED else None)
        if self.signals.hold.value:
            self.run.beat()  # held by the health signals, not dead: no other invocation may take the run over
        with self.lock:
            if note != self.note:
                self.note = note
                self._progress()

    def watch_health(self, conn: sa.Connection) -> None:
        """In the invoking process: read the database's health, set the workers' signals, and say why it is slower."""
        before = self.watch.notes()
        self.watch.judge(self.watch.read(conn))
        if self.watch.notes() != before:
            with self.lock:
                self._progress()

    def _progress(self) -> None:
        if self.on_progress:
            note = self.note or "; ".join(self.watch.notes()) or None  # the operator's brake comes first
            self.on_progress(BackfillProgress(self.run.spec.name, self.scanned, self.changed, self.total, note))

    def receive(self, report: tuple) -> None:
        """Take in one report of a worker process: a batch done, or how it failed."""
        if report[0] == "batch":
            self.account(*report[1:])
        else:
            self.errors.append(WorkerError(report[1], report[2]))
            self.stop.set()


def _work_in_process(workers: Workers, reports: Any, parent_pid: int, index: int) -> None:
    """A forked worker: the thread's loop, reporting each batch and how it ended to the parent."""
    workers.index = index
    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent's to handle: it sets workers.stop
        signal.signal(signum, signal.SIG_IGN)
    workers.run.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    workers.parent_pid = parent_pid
    workers.report = lambda *batch: reports.put(("batch", *batch))
    workers.work()
    if workers.errors:
        error = workers.errors[0]
        reports.put(("error", type(error).__name__, first_line(error)))
    workers.run.engine.dispose()


def run_backfill(engine: sa.Engine, spec: Backfill, options: BackfillOptions, on_progress: ProgressCallback | None,
                 on_start: StartCallback | None) -> BackfillResult:
    """Run one backfill to its end (or this invocation's share of it, beside other hosts)."""
    started = time.monotonic()
    if options.dry_run:
        scanned, changed = dry_run(engine, spec, options, on_progress)
        return BackfillResult(spec.name, None, scanned, changed, time.monotonic() - started, True, False, None, True)
    run = Run(engine, spec, options)
    try:
        run.start()
    except sa.exc.IntegrityError:  # another invocation created the running run just now: join it
        run.start()
    if options.workers:
        choice = WorkerChoice(options.workers, "given")
    else:
        with engine.connect() as conn:
            choice = choose_workers(conn)
    workers = Workers(run, options, choice.workers, on_progress)
    if on_start:
        on_start(BackfillStart(spec.name, run.run_id, run.joined, run.resumed_from, choice.workers, choice.why,
                               options.batch_size, workers.pace.target))
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            workers.watch_health(conn)  # a first reading: a replica already too far behind holds the first batch
        workers.watch.close()  # no forked worker may inherit its connection to a replica
    reports = _FORK.SimpleQueue()
    threads_or_processes: list[threading.Thread | multiprocessing.process.BaseProcess] = (
        [threading.Thread(target=workers.work, name=f"backfill-{spec.name}", daemon=True)] if choice.workers == 1 else
        [_FORK.Process(target=_work_in_process, args=(workers, reports, os.getpid(), i),
                       name=f"backfill-{spec.name}-{i}", daemon=True) for i in range(choice.workers)])
    # The run's total is counted beside the workers (after forking them: no child inherits its connection).
    counter = threading.Thread(target=workers.count, name=f"backfill-{spec.name}-count", daemon=True)
    watching: sa.Connection | None = None  # the health signals' session (opened after the forks: none inherits it)
    try:
        for worker in threads_or_processes:
            worker.start()
        counter.start()
        if engine.dialect.name == "postgresql":
            watching = engine.connect()
        # The count is waited for only while the run goes on: a failed run reports at once.
        brake_checked = health_checked = time.monotonic()
        while (any(w.is_alive() for w in threads_or_processes) or not reports.empty()
               or (counter.is_alive() and not workers.stop.is_set())):
            for worker in [*threads_or_processes, counter]:
                worker.join(timeout=0.05)
            while not reports.empty():
                workers.receive(reports.get())
            if watching is not None and time.monotonic() - health_checked >= health.POLL_SECONDS and not workers.stop.is_set():
                health_checked = time.monotonic()
                try:
                    workers.watch_health(watching)
                except sa.exc.DBAPIError as exc:  # as a worker's error: the run stops, resumable
                    workers.errors.append(exc)
                    workers.stop.set()
            if time.monotonic() - brake_checked >= BRAKE_POLL_SECONDS:
                brake_checked = time.monotonic()
                workers.watch_brake()
        for worker in threads_or_processes:
            if getattr(worker, "exitcode", 0) and not workers.errors:  # died without a word (OOM killer, ...)
                workers.errors.append(WorkerError("WorkerDied", f"worker process {worker.name} exited with "
                                                                f"{worker.exitcode}"))
    except KeyboardInterrupt:
        workers.stop.set()
        workers.counting.set()
        for worker in threads_or_processes:
            worker.join()
        run.interrupt("stopped by the operator")
        raise BackfillInterrupted(
            f"backfill {spec.name!r} stopped after {workers.scanned} rows (run {run.run_id}); "
            "run the same command again to resume") from None
    finally:
        workers.watch.close()
        if watching is not None:
            watching.close()
    if workers.errors:
        error = workers.errors[0]
        kind, line = (error.kind, error.line) if isinstance(error, WorkerError) else (type(error).__name__,
                                                                                     first_line(error))
        if kind != BackfillFailed.__name__:
            run.fail(f"{kind}: {line}")
        raise BackfillFailed(
            f"backfill {spec.name!r} failed in run {run.run_id}: {line}; "
            "fix the cause and run the same command again to resume") from error
    final = run.control_state()
    if final.status == CANCELLED:
        raise BackfillCancelled(
            f"backfill {spec.name!r} was cancelled by {final.cancelled_by} (run {run.run_id}) after "
            f"{workers.scanned:,} rows here; a later run starts afresh where rows still need it")
    complete = run.succeed() or run.status() == SUCCEEDED  # a cooperating worker may have ended it
    return BackfillResult(spec.name, run.run_id, workers.scanned, workers.changed, time.monotonic() - started,
                          False, run.joined, run.resumed_from, complete, dict(workers.slowed),
                          workers.watch.held_seconds, workers.watch.worst_replica_lag)


def dry_run(engine: sa.Engine, spec: Backfill, options: BackfillOptions,
            on_progress: ProgressCallback | None) -> tuple[int, int]:
    """Count what a run would change, writing nothing: the batches a run would take, one read-only transaction each."""
    scanned = changed = cursor = 0
    with engine.connect() as conn:
        total = count_needing(conn, spec, options.recompute)
        while True:
            bounds = next_bounds(conn, spec, options.recompute, cursor, 1, options.batch_size or INITIAL_BATCH_SIZE)
            if not bounds:
                conn.rollback()
                return scanned, changed
            hi = bounds[-1]
            batch_scanned, batch_changed = spec.process(conn, cursor, hi, recompute=options.recompute, write=False)
            conn.rollback()
            scanned, changed, cursor = scanned + batch_scanned, changed + batch_changed, hi
            if on_progress:
                on_progress(BackfillProgress(spec.name, scanned, changed, total))
