"""A backfill's run: its ``backfill_runs`` row, the batches it hands out, and its state transitions.

A run's status moves only as ``ALLOWED_MOVES`` says, and only through ``Run``'s methods (``start``,
``join``, ``pause``, ``resume``, ``cancel``, ``succeed``, ``fail``, ``interrupt``): each is one
UPDATE conditional on the statuses the table lets it leave, so concurrent workers, hosts and
operators cannot make a move the table forbids; one that finds the run elsewhere raises
``IllegalMove``.

At most one run per backfill is ``running`` (a partial unique index): a second invocation, on
this host or another, joins it as a cooperating worker; a run whose heartbeat stopped is marked
``interrupted`` and resumed from its cursor by a new run. Each id range handed out is recorded
in ``backfill_batches``; a worker processes a batch and deletes it in ONE short transaction,
holding the batch row's lock (``FOR UPDATE SKIP LOCKED``): no batch is processed twice, and a
batch whose worker was killed is picked up by the next worker or run.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import socket
from datetime import datetime, timezone
from typing import Callable, Iterator, NamedTuple

import sqlalchemy as sa

from calls.backfill.batching import next_bounds
from calls.backfill.errors import BackfillAlreadyRunning, BackfillFailed, IllegalMove
from calls.backfill.options import BackfillOptions
from calls.backfill.pacing import INITIAL_BATCH_SIZE
from calls.backfill.specs import Backfill, backfill_named, count_needing
from calls.backfill.sql import driver_sql
from calls.models import BackfillStatus
from schema_engine import metadata

# The statuses in named groups (as Shopify's maintenance_tasks), each with what it means to the workers.
# The backfill's current run: workers are on it or wait on it; a new invocation joins or resumes it.
ACTIVE = frozenset({BackfillStatus.RUNNING, BackfillStatus.PAUSED})
# The operator's brake: every worker stops within one batch (waits while paused, ends when cancelled).
STOPPING = frozenset({BackfillStatus.PAUSED, BackfillStatus.CANCELLED})
# Ended: no move leaves them. A later run resumes (failed, interrupted) or starts afresh (cancelled).
COMPLETED = frozenset({BackfillStatus.SUCCEEDED, BackfillStatus.FAILED, BackfillStatus.INTERRUPTED,
                       BackfillStatus.CANCELLED})
# Every move a run's status may make, from -> to. A new run starts running (an INSERT, no move).
ALLOWED_MOVES: dict[BackfillStatus, frozenset[BackfillStatus]] = {
    BackfillStatus.RUNNING: frozenset({BackfillStatus.PAUSED, BackfillStatus.CANCELLED, BackfillStatus.SUCCEEDED,
                                       BackfillStatus.FAILED, BackfillStatus.INTERRUPTED}),
    BackfillStatus.PAUSED: frozenset({BackfillStatus.RUNNING, BackfillStatus.CANCELLED}),
    **{ended: frozenset() for ended in COMPLETED},
}


def moves_to(target: BackfillStatus) -> list[BackfillStatus]:
    """Return the statuses ``ALLOWED_MOVES`` lets a run leave for ``target``, in the table's order."""
    return [status for status, targets in ALLOWED_MOVES.items() if target in targets]


class BatchFailed(Exception):
    """A batch's transaction failed (and was rolled back: its row waits in backfill_batches); which batch, and why."""

    def __init__(self, batch_id: int, lo: int, hi: int, cause: Exception) -> None:
        super().__init__(f"batch ({lo}, {hi}]: {cause}")
        self.batch_id, self.lo, self.hi, self.cause = batch_id, lo, hi, cause


class BatchDone(NamedTuple):
    scanned: int
    changed: int
    status: str  # the run's, as the batch committed
    span: int  # ids in the batch's range


class RunStopped(Exception):
    """The run left ``running`` under a worker: paused (wait) or cancelled (stop); not an error."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@functools.cache
def run_tables(dialect: str) -> tuple[sa.Table, sa.Table]:
    """The run tables, as the models describe them (only these two: building the whole schema is slower)."""
    tables = metadata.build_metadata(dialect, tables={"backfill_runs", "backfill_batches"}).tables
    return tables["backfill_runs"], tables["backfill_batches"]


@contextlib.contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for one batch.

    A batch allocates tens of thousands of rows and tuples that hold no reference cycle
    (reference counting frees them at its end); while they live, the collector would scan
    them, and the whole heap as they pile up, many times a batch.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class Run:
    """One backfill's run record, shared by every worker of every invocation that joins it."""

    # Batches handed out per claim: fewer round trips on the run's row; small enough that a
    # killed worker leaves little behind (it waits in backfill_batches, and is redone).
    CLAIM_BATCHES = 4

    def __init__(self, engine: sa.Engine, spec: Backfill, options: BackfillOptions) -> None:
        self.engine, self.spec, self.options = engine, spec, options
        self.runs, self.batches = run_tables(engine.dialect.name)
        self.run_id: int | None = None
        self.joined = False
        self.resumed_from: int | None = None
        self.rows_total: int | None = None  # of a joined run, as recorded
        self.count_after: int | None = None  # a new run's total is still to count, from this cursor

    @classmethod
    def recorded(cls, engine: sa.Engine, *, run_id: int, backfill: str) -> Run:
        """Return run ``run_id`` of ``backfill`` as recorded, to move its status (the operator's brake)."""
        run = cls(engine, backfill_named(backfill), BackfillOptions())
        run.run_id = run_id
        return run

    def start(self) -> None:
        """Join the running run of this backfill, resume a paused one, or start a new one (from a dead one's cursor)."""
        runs, name = self.runs, self.spec.name
        self.resumed_from = None  # a start retried after a race decides afresh
        with self.engine.begin() as conn:
            now = _utc(conn.execute(sa.select(sa.func.now(type_=sa.DateTime(timezone=True)))).scalar_one())
            running = conn.execute(sa.select(runs).where(runs.c.backfill == name,
                                                         runs.c.status == BackfillStatus.RUNNING)).first()
            paused = conn.execute(sa.select(runs).where(runs.c.backfill == name, runs.c.status == BackfillStatus.PAUSED)
                                  .order_by(runs.c.id.desc())).first()
            cursor = 0
            if running is None and paused is not None:
                self._resume_paused(conn, paused)
                return
            # Batches a cancelled run handed out, and that nobody took before it was cancelled.
            conn.execute(sa.delete(self.batches).where(self.batches.c.run_id.in_(
                sa.select(runs.c.id).where(runs.c.backfill == name, runs.c.status == BackfillStatus.CANCELLED))))
            if running is not None:
                age = (now - _utc(running.heartbeat_at)).total_seconds()
                if age < self.options.stale_after:
                    self.join(running)
                    return
                self._interrupt_stale(conn, running, age)
                if running.recompute == self.options.recompute:
                    cursor = running.cursor
            self.count_after = cursor
            self.run_id = conn.execute(sa.insert(runs).values(
                backfill=name, recompute=self.options.recompute,
                batch_size=self.options.batch_size or INITIAL_BATCH_SIZE,
                cursor=cursor, resumed_from_id=self.resumed_from, host=socket.gethostname()[:255], pid=os.getpid(),
            ).returning(runs.c.id)).scalar_one()

    def join(self, running: sa.Row) -> None:
        """Work on ``running``, the backfill's running run, beside its other workers (with the same options)."""
        if running.status != BackfillStatus.RUNNING:
            raise IllegalMove(run_id=running.id, backfill=self.spec.name, action="join", status=running.status)
        if running.recompute != self.options.recompute:
            raise BackfillAlreadyRunning(
                f"backfill {self.spec.name!r} is already running (run {running.id} on {running.host or '?'}, "
                f"pid {running.pid}, recompute={running.recompute}); wait for it, or run the same "
                f"command {'with' if running.recompute else 'without'} --recompute to join it")
        self.run_id, self.joined, self.rows_total = running.id, True, running.rows_total

    def _resume_paused(self, conn: sa.Connection, paused: sa.Row) -> None:
        """paused -> running: running the command again continues from the cursor (as ``--resume`` does)."""
        if paused.recompute != self.options.recompute:
            raise BackfillAlreadyRunning(
                f"backfill {self.spec.name!r} has a paused run ({paused.id}, recompute={paused.recompute}); resume it "
                f"{'with' if paused.recompute else 'without'} --recompute, or cancel it with --cancel")
        self.run_id = paused.id
        try:
            self._move(conn, "resume", BackfillStatus.RUNNING, heartbeat_at=sa.func.now())
        except IllegalMove as moved:
            if moved.status != BackfillStatus.RUNNING:
                raise
            # Another invocation resumed it first: join it all the same.
        self.joined, self.rows_total = True, paused.rows_total

    def _interrupt_stale(self, conn: sa.Connection, running: sa.Row, age: float) -> None:
        """running -> interrupted: a run whose heartbeat stopped (its workers were killed); a new run resumes it."""
        try:
            self._move(conn, "interrupt", BackfillStatus.INTERRUPTED, run_id=running.id, finished_at=sa.func.now(),
                       error=f"no heartbeat for {age:.0f}s (worker killed?); resumed by a new run")
        except IllegalMove:
            # Another invocation took it over first: the new run's INSERT meets its new run (IntegrityError),
            # and the start is retried, to join that one.
            return
        self.resumed_from = running.id

    def count_total(self, on_snapshot: Callable[[], None]) -> int | None:
        """Record a new run's total (``rows_total``): the rows it visits, as they were before any batch.

        Counting messages reads the whole table (one missing only its importance is in no
        index). On PostgreSQL the count runs in a REPEATABLE READ snapshot, and ``on_snapshot``
        is called once it is taken, so that the workers may start beside it; on SQLite (where a
        reader would hold off the writers) only after the count. None for a joined run.
        """
        if self.count_after is None:
            return None  # joined a running run, which has (or is counting) its total
        with self.engine.connect() as conn:
            beside_workers = conn.dialect.name == "postgresql"
            if beside_workers:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.exec_driver_sql("SELECT 1")  # takes the snapshot the count sees
                if beside_workers:
                    on_snapshot()
                total = count_needing(conn, self.spec, self.options.recompute, after=self.count_after)
        with self.engine.begin() as conn:
            conn.execute(sa.update(self.runs).where(self.runs.c.id == self.run_id).values(rows_total=total))
        return total

    def claim(self, conn: sa.Connection, batches_wanted: int, size: int) -> list[int]:
        """Hand out the next id ranges of ``size`` ids from the run's cursor as batches; [] when there are none."""
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""  # SQLite: the transaction's write lock
        with conn.begin():
            (cursor, status), = driver_sql(conn, f"SELECT cursor, status FROM backfill_runs WHERE id = {{p}}{lock}",
                                           (self.run_id,))
            if status == BackfillStatus.SUCCEEDED:
                return []  # a cooperating worker finished the last batch: nothing is left to hand out
            if status in STOPPING:
                raise RunStopped(status)  # the operator's brake
            if status != BackfillStatus.RUNNING:
                raise BackfillFailed(f"run {self.run_id} was marked {status} by another worker")
            bounds = next_bounds(conn, self.spec, self.options.recompute, cursor, batches_wanted, size)
            if not bounds:
                # Nothing is left after the cursor: move it to the end, so that the other
                # workers' claims do not read the table again to find that out.
                (end,), = driver_sql(conn, f"SELECT max(id) FROM {self.spec.table}", ())
                if end is not None and end > cursor:
                    driver_sql(conn, "UPDATE backfill_runs SET cursor = {p} WHERE id = {p}", (end, self.run_id))
                return []
            # batch_size: the size this worker hands out now (sized to the target, or shrunk by a signal).
            driver_sql(conn, "UPDATE backfill_runs SET cursor = {p}, batch_size = {p}, "
                             "heartbeat_at = CURRENT_TIMESTAMP WHERE id = {p}", (bounds[-1], size, self.run_id))
            ranges = list(zip(bounds, bounds[1:]))
            return [id_ for id_, in driver_sql(
                conn, "INSERT INTO backfill_batches (run_id, backfill, lo, hi) VALUES "
                      + ", ".join(["({p}, {p}, {p}, {p})"] * len(ranges)) + " RETURNING id",
                tuple(value for lo, hi in ranges for value in (self.run_id, self.spec.name, lo, hi)))]

    def process_batch(self, conn: sa.Connection, batch_id: int | None = None) -> BatchDone | None:
        """Take one batch (``batch_id``, or any waiting one), process it and commit, in one transaction.

        Taking it deletes its row under a row lock (SKIP LOCKED): if this transaction fails or its
        process is killed, the delete is rolled back and the batch waits for another worker.
        Returns what it did and the run's status as the batch committed, or None when no batch was
        waiting: a worker sees an operator's pause or cancel within one batch.
        """
        # SQL on the driver's cursor: these two statements run once a batch (docs/benchmarks.md, "Backfill throughput").
        take = ("DELETE FROM backfill_batches WHERE id = (SELECT id FROM backfill_batches WHERE backfill = {p}"
                + (" AND id = {p}" if batch_id else " ORDER BY id LIMIT 1")
                + (" FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else "") + ") RETURNING id, lo, hi")
        taken: list[tuple] = []
        try:
            with conn.begin(), cycle_collector_paused():
                taken = driver_sql(conn, take, (self.spec.name, batch_id) if batch_id else (self.spec.name,))
                if not taken:
                    return None
                (_, lo, hi), = taken
                scanned, changed = self.spec.process(conn, lo, hi, recompute=self.options.recompute, write=True)
                (status,), = driver_sql(conn, "UPDATE backfill_runs SET rows_scanned = rows_scanned + {p}, "
                                              "rows_changed = rows_changed + {p}, heartbeat_at = CURRENT_TIMESTAMP "
                                              "WHERE id = {p} RETURNING status", (scanned, changed, self.run_id))
        # The hot path's SQL runs on the driver's cursor: its errors are the driver's own.
        except (sa.exc.DBAPIError, conn.dialect.loaded_dbapi.Error) as exc:
            if not taken:
                raise
            (taken_id, lo, hi), = taken
            raise BatchFailed(taken_id, lo, hi, exc) from exc
        return BatchDone(scanned=scanned, changed=changed, status=status, span=hi - lo)

    def split(self, conn: sa.Connection, failed: BatchFailed) -> None:
        """Halve a failed batch: ``(lo, hi]`` becomes ``(lo, mid]`` and ``(mid, hi]``, both waiting;
        count it on the run."""
        mid = (failed.lo + failed.hi) // 2
        with conn.begin():
            # Unless another worker has taken the batch since (then it is done, or failed there).
            if driver_sql(conn, "UPDATE backfill_batches SET hi = {p} WHERE id = {p} AND hi = {p} RETURNING id",
                          (mid, failed.batch_id, failed.hi)):
                driver_sql(conn, "INSERT INTO backfill_batches (run_id, backfill, lo, hi) VALUES ({p}, {p}, {p}, {p})",
                           (self.run_id, self.spec.name, mid, failed.hi))
                driver_sql(conn, "UPDATE backfill_runs SET batch_splits = batch_splits + 1 WHERE id = {p}",
                           (self.run_id,))

    def beat(self) -> None:
        """Show the run alive while its workers wait (held by a health signal) without a batch to record it."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(self.runs).where(self.runs.c.id == self.run_id,
                                                    self.runs.c.status == BackfillStatus.RUNNING)
                         .values(heartbeat_at=sa.func.now()))

    def status(self) -> str:
        return self.control_state().status

    def control_state(self) -> sa.Row:
        """Return the run's status and who paused or cancelled it, when."""
        runs = self.runs
        with self.engine.connect() as conn:
            return conn.execute(sa.select(runs.c.status, runs.c.paused_by, runs.c.paused_at, runs.c.cancelled_by)
                                .where(runs.c.id == self.run_id)).one()

    def pause(self, *, by: str) -> datetime:
        """running -> paused (the operator's brake): the workers finish their batch and wait; return when."""
        with self.engine.begin() as conn:
            return self._move(conn, "pause", BackfillStatus.PAUSED, paused_by=by[:150], paused_at=sa.func.now())

    def resume(self) -> datetime:
        """paused -> running: waiting workers go on from the cursor (a new invocation may join them); return when."""
        with self.engine.begin() as conn:
            return self._move(conn, "resume", BackfillStatus.RUNNING, heartbeat_at=sa.func.now())

    def cancel(self, *, by: str) -> datetime:
        """running or paused -> cancelled: workers stop at their next batch, its waiting batches go; return when."""
        with self.engine.begin() as conn:
            # Batches handed out and not yet taken: nobody is to take them now (kept if the move is refused:
            # the transaction rolls back). Deleted before the run's row is locked, the order a worker's
            # batch transaction locks them in (no deadlock).
            conn.execute(sa.delete(self.batches).where(self.batches.c.run_id == self.run_id))
            return self._move(conn, "cancel", BackfillStatus.CANCELLED, cancelled_by=by[:150],
                              finished_at=sa.func.now())

    def succeed(self) -> bool:
        """running -> succeeded, once no batch is left waiting; return whether it did (False: batches wait)."""
        with self.engine.begin() as conn:
            drained = ~sa.exists().where(self.batches.c.backfill == self.spec.name)
            try:
                self._move(conn, "succeed", BackfillStatus.SUCCEEDED, where=drained, error=None,
                           finished_at=sa.func.now())
            except IllegalMove as moved:
                if moved.status != BackfillStatus.RUNNING:
                    raise
                return False  # still running: batches wait for another invocation's workers
        return True

    def fail(self, error: str) -> None:
        """running -> failed, with the error; a later run resumes from the cursor."""
        with self.engine.begin() as conn:
            self._move(conn, "fail", BackfillStatus.FAILED, error=error, finished_at=sa.func.now())

    def interrupt(self, reason: str) -> None:
        """running -> interrupted (stopped by the operator); a later run resumes from the cursor."""
        with self.engine.begin() as conn:
            self._move(conn, "interrupt", BackfillStatus.INTERRUPTED, error=reason, finished_at=sa.func.now())

    def _move(self, conn: sa.Connection, action: str, target: BackfillStatus, *,
              run_id: int | None = None, where: sa.ColumnElement[bool] | None = None, **values: object) -> datetime:
        """Move the run (or ``run_id``, one it takes over) to ``target`` from a status ``ALLOWED_MOVES`` lets it leave.

        Returns the moment of the move (the transaction's ``now()``, as the values record it);
        raises ``IllegalMove`` when the run is elsewhere.
        """
        runs, run_id = self.runs, run_id or self.run_id
        query = sa.update(runs).where(runs.c.id == run_id, runs.c.status.in_(moves_to(target)))
        if where is not None:
            query = query.where(where)
        # now() is the transaction's start: the same moment the UPDATE's now() records.
        now = conn.execute(sa.select(sa.func.now(type_=sa.DateTime(timezone=True)))).scalar_one()
        if conn.execute(query.values(status=target, **values)).rowcount != 1:
            status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar_one_or_none()
            raise IllegalMove(run_id=run_id, backfill=self.spec.name, action=action, status=status)
        return now
