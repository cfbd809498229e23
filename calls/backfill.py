"""Fill token counts, importance and the call context fields for existing data (``backfill_context``).

Two backfills, run in this order: ``messages`` (``conversation_history.token_count`` and missing
``importance``), then ``calls`` (``total_context_tokens``, ``context_pruned``, ``pruning_count``,
from ``calls/context_policy.replay``, the function live code uses).

How a run works, and why:
- Rows that need a backfill are those with NULL fields (``--recompute``: all rows), found by
  keyset pagination over ``id``, never OFFSET: batches are ranges of ``--batch-size`` ids
  between the first and last id in revision 004's partial index (``_next_bounds``).
- A new run's total, for progress, is counted beside the workers in a snapshot taken before
  their first batch (``_Run.count``): on a large table the count alone takes a while.
- A run's ``cursor`` (on its ``backfill_runs`` row) hands out id ranges ``(lo, hi]``; each is
  recorded in ``backfill_batches``. A worker processes a batch and deletes it in ONE short
  transaction, holding the batch row's lock (``FOR UPDATE SKIP LOCKED``): no batch is processed
  twice, and a batch whose worker was killed is picked up by the next worker or run.
- At most one run per backfill is ``running`` (a partial unique index): a second invocation,
  on this host or another, joins it as a cooperating worker; a run whose heartbeat stopped
  is marked ``interrupted`` and resumed from its cursor by a new run.
- Each batch is one round trip to write (on PostgreSQL one ``UPDATE`` over the batch's id range,
  each row's values picked by position out of arrays) and only rows whose values change are
  written: a second run changes nothing.
- Several workers are forked processes (one is a thread): counting tokens is CPU-bound Python
  glue around tiktoken, and threads would take turns on the GIL.
- A call whose conversation fits in ``CONTEXT_MAX_TOKENS`` was never pruned: its fields follow
  from per-call sums the database computes; only the others are replayed message by message.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

import sqlalchemy as sa

from calls import tokens
from calls.context_policy import (
    ContextPolicy, ContextState, PolicyMessage, importance_of, policy_message, replay, state_from_totals,
)
from reautomation import database, metadata, schema

BACKFILLS = ("messages", "calls")
CONTEXT_REVISION = "003_context_management"
RUNS_REVISION = "005_backfill_runs"


class BackfillError(Exception):
    """A backfill cannot go on; the message is one line that says what to do."""


class SchemaNotReady(BackfillError):
    """The schema lacks what the backfill fills or records."""


class BackfillAlreadyRunning(BackfillError):
    """A run of this backfill with other options is under way."""


class BackfillFailed(BackfillError):
    """A batch failed; the run is recorded as failed and can be resumed."""


class BackfillInterrupted(BackfillError):
    """Stopped by the operator; the run is recorded as interrupted and can be resumed."""


class InvalidBackfillOption(BackfillError):
    """An option is out of its range; nothing ran."""


# Bounds of the options: a batch is one transaction (a million rows is already minutes of locks),
# a worker is a process (more than the cores only queue), a throttle below a row a second never ends.
MAX_BATCH_SIZE = 1_000_000
MAX_WORKERS = 64
MIN_ROWS_PER_SECOND = 1.0
MAX_PAUSE_SECONDS = 3600.0


@dataclass(frozen=True)
class BackfillOptions:
    """How to run a backfill; every value is checked on creation (``InvalidBackfillOption``)."""

    batch_size: int = 500
    recompute: bool = False
    dry_run: bool = False
    workers: int = 1
    max_rows_per_second: float | None = None  # for the whole run (split across workers)
    pause: float = 0.0  # seconds each worker waits between batches
    stale_after: float = 120.0  # seconds without a heartbeat before a running run counts as dead

    def __post_init__(self) -> None:
        def refuse(option: str, value: object, allowed: str) -> None:
            raise InvalidBackfillOption(f"{option} {value} is out of range: give {allowed}")

        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            refuse("--batch-size", self.batch_size, f"a whole number from 1 to {MAX_BATCH_SIZE:,}")
        if not 1 <= self.workers <= MAX_WORKERS:
            refuse("--workers", self.workers, f"a whole number from 1 to {MAX_WORKERS}")
        rate = self.max_rows_per_second
        if rate is not None and not (math.isfinite(rate) and rate >= MIN_ROWS_PER_SECOND):
            refuse("--max-rows-per-second", rate, f"a number of rows a second, at least {MIN_ROWS_PER_SECOND:g}")
        if not (math.isfinite(self.pause) and 0 <= self.pause <= MAX_PAUSE_SECONDS):
            refuse("--pause", self.pause, f"seconds from 0 to {MAX_PAUSE_SECONDS:g}")
        if not (math.isfinite(self.stale_after) and self.stale_after >= 0):  # 0: any running run is dead now
            refuse("--stale-after", self.stale_after, "a number of seconds, 0 or more")


@dataclass(frozen=True)
class BackfillProgress:
    """Where a backfill stands, reported after each batch."""

    backfill: str
    scanned: int
    changed: int
    total: int | None


@dataclass(frozen=True)
class BackfillResult:
    """What one backfill did in this invocation."""

    backfill: str
    run_id: int | None
    scanned: int
    changed: int
    seconds: float
    dry_run: bool
    joined: bool
    resumed_from: int | None
    complete: bool


ProgressCallback = Callable[[BackfillProgress], None]


# --- what each backfill computes --------------------------------------------------------------

def _needing(spec: "_MessagesBackfill | _CallsBackfill", recompute: bool) -> str:
    """Return the SQL condition (`` AND ...``) for rows a run visits: all with ``recompute``."""
    return "" if recompute else f" AND {spec.pending}"


def _count_needing(conn: sa.Connection, spec: "_MessagesBackfill | _CallsBackfill", recompute: bool,
                   after: int = 0) -> int:
    """Return how many rows after id ``after`` a run visits."""
    return conn.execute(sa.text(f"SELECT count(*) FROM {spec.table} WHERE id > :after{_needing(spec, recompute)}"),
                        {"after": after}).scalar_one()


class _MessagesBackfill:
    name = "messages"
    table = "conversation_history"
    pending = "(token_count IS NULL OR importance IS NULL)"
    # Nearly every pending message lacks its token count, and revision 004's partial index lists
    # exactly those: batches are bounded by it, without reading the table (see _next_bounds).
    indexed_pending = "token_count IS NULL"

    def process(self, conn: sa.Connection, lo: int, hi: int, *, recompute: bool, write: bool) -> tuple[int, int]:
        where = _needing(self, recompute)
        # The hot path reads through the driver's cursor: plain tuples, no per-row objects.
        rows = _driver_sql(conn, f"SELECT id, role, content, token_count, importance FROM conversation_history "
                                 f"WHERE id > {{p}} AND id <= {{p}}{where} ORDER BY id", (lo, hi))
        counts = tokens.count_tokens_batch([content for _id, _role, content, _tc, _imp in rows])
        changes = []
        for (id_, role, content, token_count, importance), count in zip(rows, counts):
            new_importance = importance if importance is not None else importance_of(role, content)
            if count != token_count or new_importance != importance:
                changes.append((id_, count, new_importance))
        if write and changes:
            _bulk_update(conn, "conversation_history", ["token_count", "importance"], ["integer", "double precision"],
                         changes, keep_existing={"importance"})
        return len(rows), len(changes)


class _CallsBackfill:
    name = "calls"
    table = "calls"
    pending = "total_context_tokens IS NULL"
    indexed_pending = pending  # revision 004's partial index

    def __init__(self, policy: ContextPolicy) -> None:
        self.policy = policy

    def process(self, conn: sa.Connection, lo: int, hi: int, *, recompute: bool, write: bool) -> tuple[int, int]:
        where = _needing(self, recompute)
        calls = _driver_sql(conn, f"SELECT id, total_context_tokens, context_pruned, pruning_count FROM calls "
                                  f"WHERE id > {{p}} AND id <= {{p}}{where} ORDER BY id", (lo, hi))
        if not calls:
            return 0, 0
        # Calls' ids are a contiguous keyset range: per call, the message count, the token sum and
        # how many messages the messages backfill has not reached yet, summed by the database.
        totals = {call_id: (n, token_sum, missing) for call_id, n, token_sum, missing in _driver_sql(conn, (
            "SELECT call_id, count(*), COALESCE(sum(token_count), 0), "
            "sum(CASE WHEN token_count IS NULL OR importance IS NULL THEN 1 ELSE 0 END) "
            "FROM conversation_history WHERE call_id >= {p} AND call_id <= {p} GROUP BY call_id"),
            (calls[0][0], calls[-1][0]))}
        states: dict[int, ContextState] = {}
        for call_id, *_ in calls:
            n, token_sum, missing = totals.get(call_id, (0, 0, 0))
            state = None if missing else state_from_totals(n, token_sum, self.policy)
            if state is not None:
                states[call_id] = state
        if len(states) < len(calls):
            states.update(self._replayed(conn, [call[0] for call in calls if call[0] not in states]))
        changes = []
        for call_id, total, pruned, count in calls:
            state = states[call_id]
            new = (state.total_context_tokens, state.context_pruned, state.pruning_count)
            if new != (total, bool(pruned), count):
                changes.append((call_id, *new))
        if write and changes:
            _bulk_update(conn, "calls", ["total_context_tokens", "context_pruned", "pruning_count"],
                         ["integer", "boolean", "integer"], changes)
        return len(calls), len(changes)

    # Bound parameters per query stay well under SQLite's and PostgreSQL's limits, whatever --batch-size.
    IDS_PER_QUERY = 1000

    def _replayed(self, conn: sa.Connection, call_ids: list[int]) -> dict[int, ContextState]:
        """Replay the policy over the conversations that may have been pruned (or are not counted yet).

        Each conversation in order (turn index where set, then time, then id); content is only
        fetched for messages the messages backfill has not reached yet.
        """
        messages = []
        for chunk in (call_ids[i:i + self.IDS_PER_QUERY] for i in range(0, len(call_ids), self.IDS_PER_QUERY)):
            messages += _driver_sql(conn, (
                "SELECT call_id, role, CASE WHEN token_count IS NULL OR importance IS NULL THEN content END, "
                f"token_count, importance FROM conversation_history WHERE call_id IN ({', '.join(['{p}'] * len(chunk))}) "
                "ORDER BY call_id, turn_index NULLS LAST, created_at, id"), tuple(chunk))
        by_call: dict[int, list[PolicyMessage]] = {call_id: [] for call_id in call_ids}
        for call_id, role, content, token_count, importance in messages:
            if token_count is not None and importance is not None:
                message = PolicyMessage(role, token_count, importance)
            else:
                message = policy_message(role=role, content=content, token_count=token_count, importance=importance)
            by_call[call_id].append(message)
        return {call_id: replay(conversation, self.policy) for call_id, conversation in by_call.items()}


def _next_bounds(conn: sa.Connection, spec: "_MessagesBackfill | _CallsBackfill", options: BackfillOptions,
                 cursor: int, batches_wanted: int) -> list[int]:
    """Return ``[cursor, b1, b2, ...]``: the next batches are the id ranges ``(cursor, b1], (b1, b2], ...``.

    Where rows to visit start and end is read from the backfill's partial index (two index
    probes, no table read): ranges of ``batch_size`` ids from the first, up to the last (ids
    are a sequence, so a range holds at most that many rows). Once the index has none left,
    the whole condition finds the rare rest (messages with a token count but no importance),
    reading the table. A batch visits every row to visit in its range, whichever found it.
    """
    size, table = options.batch_size, spec.table
    where = "" if options.recompute else f" AND {spec.indexed_pending}"
    # min and max in separate queries: SQLite reads the index from one end only for a lone min() or max().
    first, last = (_driver_sql(conn, f"SELECT {end}(id) FROM {table} WHERE id > {{p}}{where}", (cursor,))[0][0]
                   for end in ("min", "max"))
    if first is not None:
        ends = [min(first - 1 + size * k, last) for k in range(1, batches_wanted + 1)]
        return [cursor, *sorted(set(ends))]
    if options.recompute or spec.indexed_pending == spec.pending:
        return []
    ids = [row[0] for row in _driver_sql(
        conn, f"SELECT id FROM {table} WHERE id > {{p}} AND {spec.pending} ORDER BY id LIMIT {{p}}",
        (cursor, size * batches_wanted))]
    if not ids:
        return []
    return [cursor, *sorted({*ids[size - 1::size], ids[-1]})]


def _driver_sql(conn: sa.Connection, sql: str, params: tuple) -> list[tuple]:
    """Run ``sql`` (``{p}`` marks each parameter) on the driver's cursor, in ``conn``'s transaction.

    Returns its rows (none for a statement that returns none). For the hot path: no statement
    object to build, no result object per query, plain tuples.
    """
    placeholder = "%s" if conn.dialect.name == "postgresql" else "?"
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(sql.replace("{p}", placeholder), params)
        return cursor.fetchall() if cursor.description is not None else []
    finally:
        cursor.close()


# Rows are written by position when their ids span at most this many times their number.
_DENSE_SPAN = 4


def _bulk_update(
    conn: sa.Connection, table: str, columns: list[str], pg_types: list[str], rows: list[tuple],
    keep_existing: set[str] = frozenset(),
) -> None:
    """Write ``rows`` of (id, *values), one per id, in one round trip; ``keep_existing`` columns only fill NULLs."""
    def value(column: str, stored: str, given: str) -> str:
        return f"COALESCE({stored}, {given})" if column in keep_existing else given

    if not rows:
        return
    if conn.dialect.name != "postgresql":
        assignments = ", ".join(f"{c} = {value(c, c, '?')}" for c in columns)
        conn.connection.driver_connection.executemany(
            f"UPDATE {table} SET {assignments} WHERE id = ?", [(*row[1:], row[0]) for row in rows])
        return
    rows = sorted(rows)
    first, last = rows[0][0], rows[-1][0]
    given: list[Sequence] = list(zip(*rows))  # the ids, then each column's values
    cursor = conn.connection.driver_connection.cursor()
    try:
        if last - first < _DENSE_SPAN * len(rows):
            # A batch's ids are (nearly) a range: read it by the primary key, each row's values
            # at its position (id - base) in arrays with a slot per id of the range; a slot
            # whose id is 0 has no row to write. PostgreSQL spends about 10% less than joining
            # unnest(ids, ...), which probes the primary key once per row.
            base, size = first - 1, last - first + 1
            slots, id_check = given, ""
            if size > len(rows):  # gaps: spread the values to their positions
                positions = [id_ - first for id_ in given[0]]
                slots = []
                for values, pg_type in zip(given, ["bigint", *pg_types]):
                    slot = [False if pg_type == "boolean" else 0] * size
                    for position, value_given in zip(positions, values):
                        slot[position] = value_given
                    slots.append(slot)
                id_check = "AND (CAST(%(v0)s AS bigint[]))[id - %(base)s] = id"
            # Without gaps every id of the range is one of the rows given (ids are unique): no
            # other row can be in it, so the ids need neither sending nor checking.
            assignments = ", ".join(
                f"{c} = {value(c, c, f'(CAST(%(v{i})s AS {t}[]))[id - %(base)s]')}"
                for i, (c, t) in enumerate(zip(columns, pg_types), start=1))
            cursor.execute(
                f"UPDATE {table} SET {assignments} WHERE id >= %(first)s AND id <= %(last)s {id_check}",
                {"base": base, "first": first, "last": last,
                 **{f"v{i}": _array_literal(slot) for i, slot in enumerate(slots) if i or id_check}})
        else:
            names = ["id", *columns]
            assignments = ", ".join(f"{c} = {value(c, f't.{c}', f'v.{c}')}" for c in columns)
            arrays = ", ".join(f"CAST(%s AS {t}[])" for t in ["bigint", *pg_types])
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} FROM unnest({arrays}) AS v({', '.join(names)}) WHERE t.id = v.id",
                [_array_literal(values) for values in given])
    finally:
        cursor.close()


def _array_literal(values: Sequence[int | float | bool | None]) -> str:
    """Return PostgreSQL's text form of an array of numbers or booleans.

    psycopg adapts a list element by element (checking each one's type): for a batch's arrays
    that costs about 3x what joining their text does, a microsecond per row.
    """
    return "{" + ",".join(["NULL" if value is None else str(value) for value in values]) + "}"


# --- runs, batches and workers ----------------------------------------------------------------

@functools.cache
def _tables(dialect: str) -> tuple[sa.Table, sa.Table]:
    """The run tables, as the models describe them (only these two: the whole schema takes 0.1 s)."""
    tables = metadata.build_metadata(dialect, tables={"backfill_runs", "backfill_batches"}).tables
    return tables["backfill_runs"], tables["backfill_batches"]


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for one batch.

    A batch allocates tens of thousands of rows and tuples that hold no reference cycle
    (reference counting frees them at its end); while they live, the collector would scan
    them, and the whole heap as they pile up, many times a batch: 3% of a worker's CPU.
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


class _Run:
    """One backfill's run, shared by this invocation's workers."""

    def __init__(self, engine: sa.Engine, spec: _MessagesBackfill | _CallsBackfill, options: BackfillOptions,
                 on_progress: ProgressCallback | None) -> None:
        self.engine, self.spec, self.options, self.on_progress = engine, spec, options, on_progress
        self.runs, self.batches = _tables(engine.dialect.name)
        self.run_id: int | None = None
        self.joined = False
        self.resumed_from: int | None = None
        self.total: int | None = None
        self.scanned = self.changed = 0
        self.lock = threading.Lock()
        self.stop = _FORK.Event()  # seen by worker threads and forked worker processes alike
        self.errors: list[BaseException] = []
        self.report: Callable[[int, int], None] = self.account  # a worker process reports to its parent
        self.parent_pid: int | None = None  # set in a worker process
        self.count_after: int | None = None  # a new run's total is still to count, from this cursor
        self.counting = _FORK.Event()  # set once that count's snapshot is taken: workers may commit

    def start(self) -> None:
        """Join the running run of this backfill, resume a dead one, or start a new one."""
        runs, name = self.runs, self.spec.name
        with self.engine.begin() as conn:
            now = _utc(conn.execute(sa.select(sa.func.now(type_=sa.DateTime(timezone=True)))).scalar_one())
            running = conn.execute(sa.select(runs).where(runs.c.backfill == name, runs.c.status == "running")).first()
            cursor = 0
            if running is not None:
                age = (now - _utc(running.heartbeat_at)).total_seconds()
                if age < self.options.stale_after:
                    if running.recompute != self.options.recompute:
                        raise BackfillAlreadyRunning(
                            f"backfill {name!r} is already running (run {running.id} on {running.host or '?'}, "
                            f"pid {running.pid}, recompute={running.recompute}); wait for it, or run the same "
                            f"command {'with' if running.recompute else 'without'} --recompute to join it")
                    self.run_id, self.joined, self.total = running.id, True, running.rows_total
                    return
                conn.execute(sa.update(runs).where(runs.c.id == running.id).values(
                    status="interrupted", finished_at=sa.func.now(),
                    error=f"no heartbeat for {age:.0f}s (worker killed?); resumed by a new run"))
                self.resumed_from = running.id
                if running.recompute == self.options.recompute:
                    cursor = running.cursor
            self.count_after = cursor
            self.run_id = conn.execute(sa.insert(runs).values(
                backfill=name, recompute=self.options.recompute, batch_size=self.options.batch_size,
                cursor=cursor, resumed_from_id=self.resumed_from, host=socket.gethostname()[:255], pid=os.getpid(),
            ).returning(runs.c.id)).scalar_one()

    def count(self) -> None:
        """Record a new run's total (``rows_total``): the rows it visits, as they were before any batch.

        Counting messages reads the whole table (one missing only its importance is in no
        index), which takes a while on a large one. On PostgreSQL it runs beside the workers, in
        a REPEATABLE READ snapshot taken before ``self.counting`` lets them start; SQLite counts
        first (a reader there would hold off the writers).
        """
        try:
            if self.count_after is None:
                return  # joined a running run, which has (or is counting) its total
            with self.engine.connect() as conn:
                beside_workers = conn.dialect.name == "postgresql"
                if beside_workers:
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    conn.exec_driver_sql("SELECT 1")  # takes the snapshot the count sees
                    if beside_workers:
                        self.counting.set()
                    total = _count_needing(conn, self.spec, self.options.recompute, after=self.count_after)
            with self.lock:
                self.total = total
            with self.engine.begin() as conn:
                conn.execute(sa.update(self.runs).where(self.runs.c.id == self.run_id).values(rows_total=total))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, as a worker's error is
            self.errors.append(exc)
            self.stop.set()
        finally:
            self.counting.set()

    def claim(self, conn: sa.Connection, batches_wanted: int) -> list[int]:
        """Hand out the next id ranges from the run's cursor as batches; [] when there are none."""
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""  # SQLite: the transaction's write lock
        with conn.begin():
            (cursor, status), = _driver_sql(conn, f"SELECT cursor, status FROM backfill_runs WHERE id = {{p}}{lock}",
                                            (self.run_id,))
            if status == "succeeded":
                return []  # a cooperating worker finished the last batch: nothing is left to hand out
            if status != "running":
                raise BackfillFailed(f"run {self.run_id} was marked {status} by another worker")
            bounds = _next_bounds(conn, self.spec, self.options, cursor, batches_wanted)
            if not bounds:
                # Nothing is left after the cursor: move it to the end, so that the other
                # workers' claims do not read the table again to find that out.
                (end,), = _driver_sql(conn, f"SELECT max(id) FROM {self.spec.table}", ())
                if end is not None and end > cursor:
                    _driver_sql(conn, "UPDATE backfill_runs SET cursor = {p} WHERE id = {p}", (end, self.run_id))
                return []
            _driver_sql(conn, "UPDATE backfill_runs SET cursor = {p}, heartbeat_at = CURRENT_TIMESTAMP WHERE id = {p}",
                        (bounds[-1], self.run_id))
            ranges = list(zip(bounds, bounds[1:]))
            return [id_ for id_, in _driver_sql(
                conn, "INSERT INTO backfill_batches (run_id, backfill, lo, hi) VALUES "
                      + ", ".join(["({p}, {p}, {p}, {p})"] * len(ranges)) + " RETURNING id",
                tuple(value for lo, hi in ranges for value in (self.run_id, self.spec.name, lo, hi)))]

    def process(self, conn: sa.Connection, batch_id: int | None = None) -> tuple[int, int] | None:
        """Take one batch (``batch_id``, or any waiting one), process it and commit, in one transaction.

        Taking it deletes its row under a row lock (SKIP LOCKED): if this transaction fails or its
        process is killed, the delete is rolled back and the batch waits for another worker.
        """
        # SQL on the driver's cursor: built by SQLAlchemy, these two statements took 3x the Python
        # (about 0.7 ms a batch, as much as counting 70 messages).
        take = ("DELETE FROM backfill_batches WHERE id = (SELECT id FROM backfill_batches WHERE backfill = {p}"
                + (" AND id = {p}" if batch_id else " ORDER BY id LIMIT 1")
                + (" FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else "") + ") RETURNING lo, hi")
        with conn.begin(), _cycle_collector_paused():
            taken = _driver_sql(conn, take, (self.spec.name, batch_id) if batch_id else (self.spec.name,))
            if not taken:
                return None
            (lo, hi), = taken
            scanned, changed = self.spec.process(conn, lo, hi, recompute=self.options.recompute, write=True)
            _driver_sql(conn, "UPDATE backfill_runs SET rows_scanned = rows_scanned + {p}, rows_changed = rows_changed + {p}, "
                              "heartbeat_at = CURRENT_TIMESTAMP WHERE id = {p}", (scanned, changed, self.run_id))
        return scanned, changed

    def work(self) -> None:
        """One worker: batches left waiting (by killed workers) first, then new ones, until none are left."""
        rate = self.options.max_rows_per_second / self.options.workers if self.options.max_rows_per_second else None
        try:
            while not self.counting.wait(0.5):  # the run's total is being counted: its snapshot comes first
                if self.orphaned():
                    return
            with self.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    # Not waiting for the WAL flush is safe here: a crash can lose only the last
                    # commits, the WAL's tail; a batch whose commit is lost keeps its row in
                    # backfill_batches and is redone. The setting ends with this connection (no pool).
                    with conn.begin():
                        _driver_sql(conn, "SET synchronous_commit TO OFF", ())
                self.drain(conn, rate)
                while not self.stop.is_set():
                    claimed = self.claim(conn, self.CLAIM_BATCHES)
                    if not claimed:
                        break
                    for batch_id in claimed:
                        if self.stop.is_set():
                            return  # unprocessed batches wait in backfill_batches for the next worker
                        self.step(conn, rate, batch_id)
                self.drain(conn, rate)  # batches a worker that died meanwhile left behind
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
            self.errors.append(exc)
            self.stop.set()

    # Batches handed out per claim: fewer round trips on the run's row; small enough that a
    # killed worker leaves little behind (it waits in backfill_batches, and is redone).
    CLAIM_BATCHES = 4

    def drain(self, conn: sa.Connection, rate: float | None) -> None:
        while not self.stop.is_set() and self.step(conn, rate):
            pass

    def step(self, conn: sa.Connection, rate: float | None, batch_id: int | None = None) -> bool:
        """Process one batch and throttle; return whether there was one."""
        if self.orphaned():
            self.stop.set()
            return False
        started = time.monotonic()
        result = self.process(conn, batch_id)
        if result is None:
            return False
        self.report(*result)
        wait = self.options.pause + (result[0] / rate - (time.monotonic() - started) if rate else 0)
        if wait > 0:
            self.stop.wait(wait)
        return True

    def orphaned(self) -> bool:
        """In a worker process: whether the invoking process was killed (stop too: batches wait for a rerun)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def account(self, scanned: int, changed: int) -> None:
        with self.lock:
            self.scanned += scanned
            self.changed += changed
            if self.on_progress:
                self.on_progress(BackfillProgress(self.spec.name, self.scanned, self.changed, self.total))

    def status(self) -> str:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.runs.c.status).where(self.runs.c.id == self.run_id)).scalar_one()

    def end(self, status: str, error: str | None = None) -> bool:
        """Record how the run ended; for success, only once no batch is left. Return whether it ended."""
        runs, batches = self.runs, self.batches
        with self.engine.begin() as conn:
            query = sa.update(runs).where(runs.c.id == self.run_id, runs.c.status == "running")
            if status == "succeeded":
                query = query.where(~sa.exists().where(batches.c.backfill == self.spec.name))
            return conn.execute(query.values(status=status, error=error, finished_at=sa.func.now())).rowcount == 1


def _dry_run(engine: sa.Engine, spec: _MessagesBackfill | _CallsBackfill, options: BackfillOptions,
             on_progress: ProgressCallback | None) -> tuple[int, int]:
    """Count what a run would change, writing nothing."""
    scanned = changed = cursor = 0
    with engine.connect() as conn:
        total = _count_needing(conn, spec, options.recompute)
        while True:
            bounds = _next_bounds(conn, spec, options, cursor, 1)  # the batches a run would take
            if not bounds:
                conn.rollback()
                return scanned, changed
            hi = bounds[-1]
            s, c = spec.process(conn, cursor, hi, recompute=options.recompute, write=False)
            conn.rollback()  # one short read-only transaction per batch
            scanned, changed, cursor = scanned + s, changed + c, hi
            if on_progress:
                on_progress(BackfillProgress(spec.name, scanned, changed, total))


def ensure_schema(*, url: sa.URL | str | None = None) -> None:
    """Raise ``SchemaNotReady`` unless the database has the fields to fill and the run tables."""
    applied = schema.applied_revisions(url=url)
    if CONTEXT_REVISION not in applied:
        raise SchemaNotReady(
            f"the schema is below {CONTEXT_REVISION}, which adds the fields to fill: "
            "run 'manage.py migrate_schema upgrade head' first")
    if RUNS_REVISION not in applied:
        raise SchemaNotReady(
            f"backfill_context records its runs in tables added by {RUNS_REVISION}: "
            "run 'manage.py migrate_schema upgrade head' first")


def _spec(name: str, policy: ContextPolicy | None = None) -> _MessagesBackfill | _CallsBackfill:
    return _MessagesBackfill() if name == "messages" else _CallsBackfill(policy or ContextPolicy.from_settings())


def pending_rows(*, url: sa.URL | str | None = None, only: tuple[str, ...] = BACKFILLS) -> dict[str, int]:
    """Return, per backfill, how many rows still need it (a count over each table: not free)."""
    ensure_schema(url=url)
    specs = [_spec(name) for name in BACKFILLS if name in only]
    with schema.connect(url) as conn:
        return {spec.name: _count_needing(conn, spec, recompute=False) for spec in specs}


def backfill_context(
    *,
    only: Sequence[str] = BACKFILLS,
    options: BackfillOptions = BackfillOptions(),
    url: sa.URL | str | None = None,
    policy: ContextPolicy | None = None,
    on_progress: ProgressCallback | None = None,
    on_start: Callable[[str, int | None, bool, int | None], None] | None = None,
    on_finish: Callable[[BackfillResult], None] | None = None,
) -> list[BackfillResult]:
    """Run the backfills in ``only`` (messages before calls) and return what each did.

    ``on_finish`` hears of each as it ends, so a later one's failure does not hide it.
    """
    ensure_schema(url=url)
    tokens.encoding()  # fail before any run is recorded if the encoding cannot load
    engine = database.create_engine(url or database.sqlalchemy_url())
    results = []
    try:
        for name in (b for b in BACKFILLS if b in only):
            results.append(_run_one(engine, _spec(name, policy), options, on_progress, on_start))
            if on_finish:
                on_finish(results[-1])
    finally:
        engine.dispose()
    return results


_FORK = multiprocessing.get_context("fork")


class _WorkerError(Exception):
    """An error a worker process reported (exceptions themselves may not survive pickling)."""

    def __init__(self, kind: str, line: str) -> None:
        super().__init__(line)
        self.kind, self.line = kind, line


def _describe(error: BaseException) -> tuple[str, str]:
    """Return an error's type name and first line (a database error's own message)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return type(error).__name__, text.splitlines()[0] if text else type(error).__name__


def _work_in_process(run: _Run, reports: Any, parent_pid: int) -> None:
    """A forked worker: the thread's loop, reporting each batch and how it ended to the parent."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent's to handle: it sets run.stop
        signal.signal(signum, signal.SIG_IGN)
    run.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    run.parent_pid = parent_pid
    run.report = lambda scanned, changed: reports.put(("batch", scanned, changed))
    run.work()
    if run.errors:
        reports.put(("error", *_describe(run.errors[0])))
    run.engine.dispose()


def _receive(run: _Run, report: tuple) -> None:
    if report[0] == "batch":
        run.account(report[1], report[2])
    else:
        run.errors.append(_WorkerError(report[1], report[2]))
        run.stop.set()


def _run_one(engine: sa.Engine, spec: _MessagesBackfill | _CallsBackfill, options: BackfillOptions,
             on_progress: ProgressCallback | None,
             on_start: Callable[[str, int | None, bool, int | None], None] | None) -> BackfillResult:
    started = time.monotonic()
    if options.dry_run:
        scanned, changed = _dry_run(engine, spec, options, on_progress)
        return BackfillResult(spec.name, None, scanned, changed, time.monotonic() - started, True, False, None, True)
    run = _Run(engine, spec, options, on_progress)
    try:
        run.start()
    except sa.exc.IntegrityError as exc:  # another invocation created the running run just now: join it
        if "uq_backfill_runs_one_running" not in str(exc.orig) and "UNIQUE" not in str(exc.orig):
            raise
        run.start()
    if on_start:
        on_start(spec.name, run.run_id, run.joined, run.resumed_from)
    reports = _FORK.SimpleQueue()
    # One worker: a thread. Several: forked processes, since threads would take turns on the GIL
    # between tiktoken calls.
    workers: list[threading.Thread | multiprocessing.process.BaseProcess] = (
        [threading.Thread(target=run.work, name=f"backfill-{spec.name}", daemon=True)] if options.workers == 1 else
        [_FORK.Process(target=_work_in_process, args=(run, reports, os.getpid()), name=f"backfill-{spec.name}-{i}",
                       daemon=True) for i in range(options.workers)])
    # The run's total is counted beside the workers (after forking them: no child inherits its connection).
    counter = threading.Thread(target=run.count, name=f"backfill-{spec.name}-count", daemon=True)
    try:
        for worker in workers:
            worker.start()
        counter.start()
        # The count is waited for only while the run goes on: a failed run reports at once.
        while (any(w.is_alive() for w in workers) or not reports.empty()
               or (counter.is_alive() and not run.stop.is_set())):
            for worker in [*workers, counter]:
                worker.join(timeout=0.1)
            while not reports.empty():
                _receive(run, reports.get())
        for worker in workers:
            if getattr(worker, "exitcode", 0) and not run.errors:  # died without a word (OOM killer, ...)
                run.errors.append(_WorkerError("WorkerDied", f"worker process {worker.name} exited with {worker.exitcode}"))
    except KeyboardInterrupt:
        run.stop.set()
        run.counting.set()
        for worker in workers:
            worker.join()
        run.end("interrupted", "stopped by the operator")
        raise BackfillInterrupted(
            f"backfill {spec.name!r} stopped after {run.scanned} rows (run {run.run_id}); "
            "run the same command again to resume") from None
    if run.errors:
        error = run.errors[0]
        kind, first_line = (error.kind, error.line) if isinstance(error, _WorkerError) else _describe(error)
        if kind != BackfillFailed.__name__:
            run.end("failed", f"{kind}: {first_line}")
        raise BackfillFailed(
            f"backfill {spec.name!r} failed in run {run.run_id}: {first_line}; "
            "fix the cause and run the same command again to resume") from error
    complete = run.end("succeeded") or run.status() == "succeeded"  # a cooperating worker may have ended it
    return BackfillResult(spec.name, run.run_id, run.scanned, run.changed, time.monotonic() - started,
                          False, run.joined, run.resumed_from, complete)
