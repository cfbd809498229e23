"""This invocation's part in a run: start the workers, hear them, watch the database and the brake, end the run.

One worker is a thread; several are forked processes (``--workers``, or as many as
``pacing.choose_workers`` picks), since counting tokens is CPU-bound Python around tiktoken and
threads would take turns on the GIL between tiktoken's calls. The supervisor takes in the
workers' messages (``workers.BatchReport``, ``workers.WorkerFailed``) and reports one progress,
reads the database's health (``health.HealthWatch``) for every worker, beats the run's heart
while they hold, follows the operator's brake, and ends the run: succeeded, failed or
interrupted. A new run's total is counted beside the workers.
"""
from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.queues
import os
import signal
import threading
import time

import sqlalchemy as sa
from django.conf import settings

from calls.backfill import brake, health
from calls.backfill.batching import next_bounds
from calls.backfill.errors import BackfillCancelled, BackfillFailed, BackfillInterrupted, IllegalMove
from calls.backfill.events import BackfillProgress, BackfillStarted
from calls.backfill.options import BackfillOptions, BackfillResult
from calls.backfill.pacing import INITIAL_BATCH_SIZE, SLOW_BATCH_FACTOR, WorkerChoice, choose_workers
from calls.backfill.runs import Run
from calls.backfill.specs import Backfill, ColumnFill, count_needing
from calls.backfill.workers import BatchReport, Crew, Worker, WorkerFailed, WorkerMessage
from calls.models import BackfillStatus
from schema_engine.progress import Reporter

_FORK = multiprocessing.get_context("fork")


def run_backfill(engine: sa.Engine, spec: Backfill, options: BackfillOptions, reporter: Reporter) -> BackfillResult:
    """Run one backfill to its end (or this invocation's share of it, beside other hosts)."""
    started = time.monotonic()
    if options.dry_run:
        return dry_run(engine, spec, options, reporter)
    run = Run(engine, spec, options)
    try:
        run.start()
    except sa.exc.IntegrityError:  # another invocation created the running run just now: join it
        run.start()
    if options.workers:
        choice = WorkerChoice(workers=options.workers, why="given")
    else:
        with engine.connect() as conn:
            choice = choose_workers(conn)
    supervisor = Supervisor(run=run, options=options, workers=choice.workers, reporter=reporter, started=started)
    reporter(BackfillStarted(backfill=spec.name, run_id=run.run_id, joined=run.joined, resumed_from=run.resumed_from,
                             workers=choice.workers, workers_why=choice.why, batch_size=options.batch_size,
                             target_seconds=settings.BACKFILL_BATCH_SECONDS,
                             fills=spec.describes if isinstance(spec, ColumnFill) else ""))
    supervisor.supervise()
    return supervisor.end()


class Supervisor:
    """The workers this invocation puts on a run, and what they did."""

    def __init__(self, *, run: Run, options: BackfillOptions, workers: int, reporter: Reporter,
                 started: float) -> None:
        self.run, self.options, self.workers, self.reporter = run, options, workers, reporter
        self.crew = Crew()
        self.watch = health.HealthWatch(run.spec.table, self.crew.signals, settings.BACKFILL_MAX_REPLICA_LAG, workers)
        self.started = started  # time.monotonic() as this invocation took the backfill on
        self.total: int | None = run.rows_total
        self.scanned = self.changed = 0
        self.slowed: collections.Counter[str] = collections.Counter()  # batches each signal slowed
        self.failures: list[WorkerFailed] = []
        self.note: str | None = None  # the brake's, for the progress line
        self.lock = threading.Lock()

    def supervise(self) -> None:
        """Start the workers and the count, and watch them until they end; record a Ctrl-C as an interruption."""
        engine, name = self.run.engine, self.run.spec.name
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                self.watch_health(conn)  # a first reading: a replica already too far behind holds the first batch
            self.watch.close()  # no forked worker may inherit its connection to a replica
        reports = _FORK.SimpleQueue()
        workers = self._workers(reports)
        # The run's total is counted beside the workers (after forking them: no child inherits its connection).
        counter = threading.Thread(target=self.count, name=f"backfill-{name}-count", daemon=True)
        watching: sa.Connection | None = None  # the health signals' session (opened after the forks: none inherits it)
        try:
            for worker in workers:
                worker.start()
            counter.start()
            if engine.dialect.name == "postgresql":
                watching = engine.connect()
            self._watch(workers, counter, reports, watching)
        except KeyboardInterrupt:
            self.crew.stop.set()
            self.crew.counting.set()
            for worker in workers:
                worker.join()
            with contextlib.suppress(IllegalMove):  # paused or cancelled meanwhile: the operator's status stands
                self.run.interrupt("stopped by the operator")
            raise BackfillInterrupted(
                f"backfill {name!r} stopped after {self.scanned} rows (run {self.run.run_id}); "
                "run the same command again to resume") from None
        finally:
            self.watch.close()
            if watching is not None:
                watching.close()

    def _workers(
        self, reports: multiprocessing.queues.SimpleQueue
    ) -> list[threading.Thread | multiprocessing.process.BaseProcess]:
        """One worker in a thread, telling this process directly; or forked processes, through ``reports``."""
        name, rate = self.run.spec.name, self.options.rate_per_worker(self.workers)
        if self.workers == 1:
            worker = Worker(run=self.run, options=self.options, crew=self.crew, send=self.receive, rate=rate)
            return [threading.Thread(target=worker.work, name=f"backfill-{name}", daemon=True)]
        return [_FORK.Process(target=_work_in_process, name=f"backfill-{name}-{index}", daemon=True, args=(
                    Worker(run=self.run, options=self.options, crew=self.crew, send=reports.put, rate=rate,
                           index=index, parent_pid=os.getpid()),))
                for index in range(self.workers)]

    def _watch(self, workers: list[threading.Thread | multiprocessing.process.BaseProcess], counter: threading.Thread,
               reports: multiprocessing.queues.SimpleQueue, watching: sa.Connection | None) -> None:
        """Until the workers end: take in their messages, read the health signals and the brake;
        a silent death fails."""
        # The count is waited for only while the run goes on: a failed run reports at once.
        brake_checked = health_checked = time.monotonic()
        while (any(w.is_alive() for w in workers) or not reports.empty()
               or (counter.is_alive() and not self.crew.stop.is_set())):
            for worker in [*workers, counter]:
                worker.join(timeout=0.05)
            while not reports.empty():
                self.receive(reports.get())
            if (watching is not None and time.monotonic() - health_checked >= health.POLL_SECONDS
                    and not self.crew.stop.is_set()):
                health_checked = time.monotonic()
                try:
                    self.watch_health(watching)
                except sa.exc.DBAPIError as exc:  # as a worker's error: the run stops, resumable
                    self.receive(WorkerFailed.of(exc))
            if time.monotonic() - brake_checked >= brake.BRAKE_POLL_SECONDS:
                brake_checked = time.monotonic()
                self.watch_brake()
        for worker in workers:
            if getattr(worker, "exitcode", 0) and not self.failures:  # died without a word (OOM killer, ...)
                self.failures.append(WorkerFailed(kind="WorkerDied",
                                                  line=f"worker process {worker.name} exited with {worker.exitcode}"))

    def end(self) -> BackfillResult:
        """End the run as its workers left it:
        failed (``BackfillFailed``), cancelled (``BackfillCancelled``) or done."""
        run, name = self.run, self.run.spec.name
        if self.failures:
            failure = self.failures[0]
            if failure.kind != BackfillFailed.__name__:  # not "marked ... by another worker": the run is still ours
                with contextlib.suppress(IllegalMove):  # the operator's cancel (or pause) came first: it stands
                    run.fail(f"{failure.kind}: {failure.line}")
            raise BackfillFailed(
                f"backfill {name!r} failed in run {run.run_id}: {failure.line}; "
                "fix the cause and run the same command again to resume") from failure.cause
        final = run.control_state()
        if final.status == BackfillStatus.CANCELLED:
            raise BackfillCancelled(
                f"backfill {name!r} was cancelled by {final.cancelled_by} (run {run.run_id}) after "
                f"{self.scanned:,} rows here; a later run starts afresh where rows still need it")
        try:
            complete = run.succeed()  # False: batches still wait, for another invocation's workers
        except IllegalMove as moved:
            complete = moved.status == BackfillStatus.SUCCEEDED  # a cooperating worker ended it
        return BackfillResult(
            backfill=name, run_id=run.run_id, scanned=self.scanned, changed=self.changed,
            seconds=time.monotonic() - self.started, dry_run=False, joined=run.joined, resumed_from=run.resumed_from,
            complete=complete, slowed=dict(self.slowed), held_seconds=self.watch.held_seconds,
            worst_replica_lag=self.watch.worst_replica_lag)

    def receive(self, message: WorkerMessage) -> None:
        """Take in one message of a worker: a batch done, or how it failed."""
        if isinstance(message, BatchReport):
            self.account(message)
        else:
            self.failures.append(message)
            self.crew.stop.set()

    def account(self, batch: BatchReport) -> None:
        with self.lock:
            self.scanned += batch.scanned
            self.changed += batch.changed
            self.slowed.update(batch.slowed_by)
            target = settings.BACKFILL_BATCH_SECONDS
            if batch.seconds > SLOW_BATCH_FACTOR * target:
                self.watch.note_slow_batch(batch.seconds, target)
            self._progress()

    def count(self) -> None:
        """Count the run's total (a thread beside the workers); let the workers go once its snapshot is taken."""
        try:
            total = self.run.count_total(on_snapshot=self.crew.counting.set)
            if total is not None:
                with self.lock:
                    self.total = total
        except BaseException as exc:  # noqa: BLE001 - as a worker's error: the run fails with it
            self.receive(WorkerFailed.of(exc))
        finally:
            self.crew.counting.set()

    def watch_brake(self) -> None:
        """Say on the progress line when the run is paused (and by whom), or goes on; beat its heart while held."""
        note = brake.note(self.run.control_state())
        if self.crew.signals.hold.value:
            self.run.beat()  # held by the health signals, not dead: no other invocation may take the run over
        with self.lock:
            if note != self.note:
                self.note = note
                self._progress()

    def watch_health(self, conn: sa.Connection) -> None:
        """Read the database's health, set the workers' signals, and say why the run is slower."""
        before = self.watch.notes()
        self.watch.judge(self.watch.read(conn))
        if self.watch.notes() != before:
            with self.lock:
                self._progress()

    def _progress(self) -> None:
        note = self.note or "; ".join(self.watch.notes()) or None  # the operator's brake comes first
        self.reporter(BackfillProgress(backfill=self.run.spec.name, scanned=self.scanned, changed=self.changed,
                                       total=self.total, note=note))


def _work_in_process(worker: Worker) -> None:
    """A forked worker: the thread's loop, its messages sent to the invoking process."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent's to handle: it sets the crew's stop
        signal.signal(signum, signal.SIG_IGN)
    send = worker.send
    # An exception may not pickle: its kind and line travel.
    worker.send = lambda message: send(WorkerFailed(kind=message.kind, line=message.line)
                                       if isinstance(message, WorkerFailed) else message)
    worker.run.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    worker.work()
    worker.run.engine.dispose()


def dry_run(engine: sa.Engine, spec: Backfill, options: BackfillOptions, reporter: Reporter) -> BackfillResult:
    """Count what a run would change, writing nothing: the batches a run would take, one read-only transaction each."""
    started = time.monotonic()
    scanned = changed = cursor = 0
    with engine.connect() as conn:
        total = count_needing(conn, spec, options.recompute)
        while bounds := next_bounds(conn, spec, options.recompute, cursor, 1, options.batch_size or INITIAL_BATCH_SIZE):
            hi = bounds[-1]
            batch_scanned, batch_changed = spec.process(conn, cursor, hi, recompute=options.recompute, write=False)
            conn.rollback()
            scanned, changed, cursor = scanned + batch_scanned, changed + batch_changed, hi
            reporter(BackfillProgress(backfill=spec.name, scanned=scanned, changed=changed, total=total))
        conn.rollback()
    return BackfillResult(backfill=spec.name, run_id=None, scanned=scanned, changed=changed,
                          seconds=time.monotonic() - started, dry_run=True, joined=False, resumed_from=None,
                          complete=True)
