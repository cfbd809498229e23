"""What keeps a migration safe on a live PostgreSQL: one migrator at a time, and DDL that never queues for long.

- An advisory lock, session-level and on its own connection (a transaction-level one would be
  released by Alembic's ``autocommit_block``), so two deploy hosts never apply a revision twice:
  the second waits up to ``MIGRATION_LOCK_WAIT_SECONDS``, then finds nothing left to do.
- ``lock_timeout`` on the migration connection, set after the advisory lock is held (else the
  wait for the advisory lock itself would time out): an ALTER TABLE stuck behind a long
  transaction gives up quickly instead of queueing every later query behind it, and the revision
  is retried ``MIGRATION_LOCK_RETRIES`` times with growing pauses.
- ``statement_timeout``, so no statement runs unbounded.
- While the migration runs, another session samples who blocks it (``pg_blocking_pids``), so that
  a retry line and the final refusal name the sessions holding the lock (``BlockerWatch``); with
  ``MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER`` set, a blocker idle in its transaction longer than
  that is terminated before the retry (never one running a query, a walsender, nor a session of the
  engine's or a backfill's: ``MIGRATION_APPLICATION_PREFIX``, ``BACKFILL_APPLICATION_NAME``), and
  the retry line says so. What the migration's role lacks to see or end a blocker
  (``pg_read_all_stats``, ``pg_signal_backend``) the retry line says too, and the retries go on.

Settings (``reautomation/settings.py``) hold the numbers; this module reads them on each run.
"""
from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import sqlalchemy as sa
from django.conf import settings

from schema_engine import database
from schema_engine.errors import (
    INSUFFICIENT_PRIVILEGE,
    LOCK_NOT_AVAILABLE,
    QUERY_CANCELED,
    LockRetriesExhausted,
    MigrationLockBusy,
    StatementTimedOut,
    first_line,
    sqlstate,
)
from schema_engine.progress import Event, Reporter, ignore

# pg_advisory_lock's key: any constant bigint that this project's migrators agree on.
MIGRATION_LOCK_KEY = 0x5245_4155_544F  # "REAUTO"

# The application_name of the project's own sessions, written here once: the engine's are
# ``migrate_schema@HOST``, the backfill's workers ``backfill_context``. A blocker by one of these
# names is never terminated: ending a backfill mid-batch fails its run, ending a migrator its revision.
MIGRATION_APPLICATION_PREFIX = "migrate_schema@"
BACKFILL_APPLICATION_NAME = "backfill_context"


def migration_application_name() -> str:
    """Return the ``application_name`` of this host's migration sessions."""
    return f"{MIGRATION_APPLICATION_PREFIX}{socket.gethostname()}"[:63]  # PostgreSQL keeps 63 bytes

T = TypeVar("T")


@dataclass(frozen=True)
class GuardSettings:
    lock_wait_seconds: float
    lock_timeout: str
    statement_timeout: str
    lock_retries: int
    retry_pause_seconds: float
    terminate_idle_after: float = 0.0  # seconds idle in a transaction past which a blocker is ended; 0: never

    @classmethod
    def from_settings(cls) -> "GuardSettings":
        return cls(
            lock_wait_seconds=float(settings.MIGRATION_LOCK_WAIT_SECONDS),
            lock_timeout=str(settings.MIGRATION_LOCK_TIMEOUT),
            statement_timeout=str(settings.MIGRATION_STATEMENT_TIMEOUT),
            lock_retries=int(settings.MIGRATION_LOCK_RETRIES),
            retry_pause_seconds=float(settings.MIGRATION_RETRY_PAUSE_SECONDS),
            terminate_idle_after=float(settings.MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER),
        )


def _lock_holder(connection: sa.Connection) -> str:
    row = connection.execute(sa.text(
        "SELECT a.pid, a.application_name, a.client_addr::text, now() - a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.objid = (:key & 4294967295) AND l.classid = (:key >> 32) AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"), {"key": MIGRATION_LOCK_KEY}).first()
    if row is None:
        return "another migrator"
    pid, app, addr, age = row
    return f"{app or 'a session'} (pid {pid}{', from ' + addr if addr else ''}, connected {str(age).split('.')[0]} ago)"


@contextlib.contextmanager
def migration_lock(engine: sa.Engine, wait_seconds: float) -> Iterator[None]:
    """Hold the migration advisory lock on a connection of its own for the ``with`` block.

    Refused through a transaction pooler (``database.require_session``): the lock would stay on a
    pooled server connection, held for no one.
    """
    database.require_session(engine.url)
    with engine.connect() as holder:
        holder = holder.execution_options(isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + wait_seconds
        pause = 0.2
        while not holder.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}).scalar():
            if time.monotonic() >= deadline:
                raise MigrationLockBusy(
                    f"another migration holds the migration lock: {_lock_holder(holder)}; waited "
                    f"{wait_seconds:g} s (MIGRATION_LOCK_WAIT_SECONDS). Let it finish, then run this again")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 2.0)
        try:
            yield
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})


def set_timeouts(connection: sa.Connection, guard: GuardSettings) -> None:
    """Set ``lock_timeout`` and ``statement_timeout`` for the session (committed: a rollback would undo them).

    Reset as the connection goes back to its pool (``database.set_session``): whoever is handed
    that connection next does not inherit them.
    """
    database.set_session(connection, {"lock_timeout": guard.lock_timeout, "statement_timeout": guard.statement_timeout,
                                      "application_name": migration_application_name()})
    connection.commit()


@dataclass(frozen=True)
class Blocker:
    """A session that blocked the migration's statement, as ``pg_stat_activity`` showed it."""

    pid: int
    application: str
    state: str  # "idle in transaction", "active", ...
    transaction_seconds: float | None
    query: str  # its first words
    state_seconds: float | None = None  # how long it has been in ``state``
    # Its details are hidden from the migration's role (another role's session, no pg_read_all_stats).
    hidden: bool = False

    def __str__(self) -> str:
        if self.hidden:
            return f"pid {self.pid} ({self.application or 'no application_name'}, its state hidden from this role)"
        age = f", transaction open {self.transaction_seconds:.0f}s" if self.transaction_seconds is not None else ""
        return f"pid {self.pid} ({self.application or 'no application_name'}, {self.state}{age}: {self.query})"


# PostgreSQL shows another role's session, to a role without pg_read_all_stats, with its pid and
# application_name only: backend_type, state and the times are NULL.
_SESSION_COLUMNS = ("pid, application_name, coalesce(state, '?'), EXTRACT(epoch FROM now() - xact_start)::float8, "
                    "left(regexp_replace(query, '\\s+', ' ', 'g'), 60), "
                    "EXTRACT(epoch FROM now() - state_change)::float8, backend_type IS NULL")
BLOCKERS_SQL = sa.text(f"SELECT {_SESSION_COLUMNS} FROM pg_stat_activity "
                       "WHERE pid = ANY (pg_blocking_pids(:pid)) ORDER BY xact_start")
# Ends a session only if, at this instant, it is an application's session (a client backend, not a
# walsender; not the engine's own nor a backfill's), still idle in its transaction, and has been
# longer than the limit. A session hidden from this role matches none of it and is left alone.
TERMINATE_IDLE_SQL = sa.text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :pid "
    "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
    "AND application_name <> :backfill AND NOT starts_with(application_name, :engine) "
    "AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
    "AND now() - state_change > make_interval(secs => :limit)"
).bindparams(backfill=BACKFILL_APPLICATION_NAME, engine=MIGRATION_APPLICATION_PREFIX)
# Whether a session belongs to a superuser: only a superuser may end it, pg_signal_backend or not.
SUPERUSER_SESSION_SQL = sa.text("SELECT r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid "
                                "WHERE a.pid = :pid")
# Sessions whose transaction is older than :older_than seconds, with each table they hold a lock on.
LONG_TRANSACTIONS_SQL = sa.text(
    f"SELECT DISTINCT locked.relname, {_SESSION_COLUMNS} FROM pg_stat_activity JOIN ("
    "  SELECT l.pid AS holder, c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
    "  WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    "    AND l.granted AND c.relkind IN ('r', 'p')) AS locked ON locked.holder = pid "
    "WHERE pid <> pg_backend_pid() AND now() - xact_start > make_interval(secs => :older_than) "
    "ORDER BY 1, 2")


class BlockerWatch:
    """While the migration runs, sample on another session who blocks its session; keep the last seen.

    A statement stopped by ``lock_timeout`` no longer waits, so who blocked it can only be seen
    while it waited: every ``interval`` seconds, ``pg_blocking_pids`` of the migration's backend.
    """

    def __init__(self, engine: sa.Engine, pid: int, interval: float = 0.05) -> None:
        self.engine, self.pid, self.interval = engine, pid, interval
        self.blockers: tuple[Blocker, ...] = ()
        self.role = "the migration role"  # replaced by its name (quoted as SQL needs it) once connected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="migration-blockers", daemon=True)

    def __enter__(self) -> BlockerWatch:
        self.blockers = ()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _connect(self) -> sa.Connection:
        """Open a session of the engine's, named as its other sessions are; learn the role it runs as."""
        conn = self.engine.connect()
        self.role = conn.execute(sa.text("SELECT quote_ident(current_user::text), "
                                         "set_config('application_name', :v, false)"),
                                 {"v": migration_application_name()}).scalar()
        conn.commit()  # a rollback would undo set_config
        return conn

    def _watch(self) -> None:
        try:
            with self._connect() as conn:
                while not self._stop.wait(self.interval):
                    seen = tuple(Blocker(*row) for row in conn.execute(BLOCKERS_SQL, {"pid": self.pid}))
                    conn.rollback()
                    if seen:
                        self.blockers = seen
        except sa.exc.DBAPIError:
            pass  # a diagnosis only: the migration's own errors say what failed

    def grant(self, role: str) -> str:
        """``GRANT role TO <the migration's role>``: what the migration's role lacks."""
        return f"GRANT {role} TO {self.role}"

    def terminate_idle(self, limit: float) -> Termination:
        """End the blockers last seen idle in a transaction for longer than ``limit`` seconds; say which.

        Checked again as it ends each: a blocker that has since run a query is left alone, and so
        is a session of the engine's or a backfill's, a walsender, and one hidden from this role.
        """
        ended: list[Blocker] = []
        refused: list[tuple[Blocker, str]] = []
        with self._connect() as conn:
            for blocker in self.blockers:
                try:
                    if conn.execute(TERMINATE_IDLE_SQL, {"pid": blocker.pid, "limit": limit}).scalar():
                        ended.append(blocker)
                    conn.commit()
                except sa.exc.DBAPIError as exc:
                    if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
                        raise
                    conn.rollback()
                    superuser = conn.execute(SUPERUSER_SESSION_SQL, {"pid": blocker.pid}).scalar()
                    conn.rollback()
                    refused.append((blocker, "a superuser's session: only a superuser may end it" if superuser
                                    else self.grant("pg_signal_backend")))
        spared = tuple(b for b in self.blockers if not b.hidden and _is_own_session(b.application))
        self.blockers = tuple(b for b in self.blockers if b not in ended)
        return Termination(ended=tuple(ended), refused=tuple(refused), spared=spared)

    def describe(self) -> str:
        """``; blocked by pid ...; pid ...`` for the blockers last seen (and what hides them), or nothing."""
        if not self.blockers:
            return ""
        hidden = (f"; cannot see who blocks ({self.grant('pg_read_all_stats')})"
                  if any(b.hidden for b in self.blockers) else "")
        return f"; blocked by {'; '.join(map(str, self.blockers))}{hidden}"


@dataclass(frozen=True)
class Termination:
    """What ``BlockerWatch.terminate_idle`` did."""

    ended: tuple[Blocker, ...] = ()
    refused: tuple[tuple[Blocker, str], ...] = ()  # each with what would let it be ended
    spared: tuple[Blocker, ...] = ()  # the project's own sessions, never ended

    def describe(self, limit: float) -> str:
        """The retry line's account: ``; terminated pid ...``, ``; could not end pid ...``."""
        return "".join(
            [f"; terminated pid {b.pid} ({b.application or 'no application_name'}, idle in its transaction "
             f"{b.state_seconds or 0:.0f}s, longer than MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER={limit:g}s)"
             for b in self.ended]
            + [f"; could not end pid {b.pid} ({why})" for b, why in self.refused]
            + [f"; left pid {b.pid} alone ({b.application}: the project's own session)" for b in self.spared])


@dataclass(frozen=True)
class LockRetry(Event):
    """A statement gave up at ``lock_timeout``: the revision is retried after ``pause`` seconds."""

    attempt: int  # 1 for the first retry
    pause: float
    reason: str  # the error, who blocked it and what was done to them: the line says it all
    blockers: tuple[Blocker, ...] = ()  # the sessions last seen blocking it (none: not seen in time)

    def describe(self) -> str:
        return f"lock_timeout: {self.reason}; retry {self.attempt} in {self.pause:.1f} s"


def _is_own_session(application: str) -> bool:
    """Whether ``application`` names one of the project's own sessions (for the retry line; the SQL decides)."""
    return application == BACKFILL_APPLICATION_NAME or application.startswith(MIGRATION_APPLICATION_PREFIX)


def long_transactions(connection: sa.Connection, tables: set[str], older_than: float) -> list[tuple[str, Blocker]]:
    """Return (table, session) for each of ``tables`` locked by a transaction open longer than ``older_than`` s.

    Such a session makes a revision's DDL on that table wait and give up (``lock_timeout``).
    """
    if connection.dialect.name != "postgresql" or not tables:
        return []
    rows = connection.execute(LONG_TRANSACTIONS_SQL, {"older_than": older_than}).all()
    connection.commit()
    return [(table, Blocker(*session)) for table, *session in rows if table in tables]


def with_lock_retries(run: Callable[[], T], guard: GuardSettings, *, reporter: Reporter = ignore,
                      watch: Callable[[], BlockerWatch] | None = None) -> T:
    """Call ``run``; when a statement hits ``lock_timeout``, pause and call it again, a bounded number of times.

    ``run`` must resume where the last try stopped: Alembic's ``upgrade`` does, each revision
    being its own transaction (a revision that failed was rolled back; earlier ones stay).
    ``watch`` makes the ``BlockerWatch`` of each try, whose blockers each ``LockRetry`` names.
    """
    not_ended: dict[int, str] = {}  # pid -> what would have let an earlier try end it
    for attempt in range(guard.lock_retries + 1):
        blockers = watch() if watch else contextlib.nullcontext()
        try:
            with blockers:
                return run()
        except sa.exc.DBAPIError as exc:
            state = sqlstate(exc)
            seen = blockers.blockers if isinstance(blockers, BlockerWatch) else ()
            reason = first_line(exc) + (blockers.describe() if isinstance(blockers, BlockerWatch) else "")
            if state == QUERY_CANCELED and "statement timeout" in reason:
                raise StatementTimedOut(
                    f"a statement ran longer than statement_timeout={guard.statement_timeout} and was rolled back "
                    f"({reason}); raise MIGRATION_STATEMENT_TIMEOUT or run it in a quieter hour") from exc
            if state != LOCK_NOT_AVAILABLE:
                raise
            if attempt == guard.lock_retries:
                reason += "".join(f"; could not end pid {pid} ({why})" for pid, why in not_ended.items())
                raise LockRetriesExhausted(
                    f"could not lock a table within lock_timeout={guard.lock_timeout}, {attempt + 1} tries "
                    f"({reason}): a long transaction holds it; find it in pg_stat_activity, end it, and run "
                    f"this again ({_settings_hint(guard)})") from exc
            if guard.terminate_idle_after and isinstance(blockers, BlockerWatch):
                # A blocker this role may not end is said, and the retries go on: it may yet finish.
                termination = blockers.terminate_idle(guard.terminate_idle_after)
                not_ended.update((b.pid, why) for b, why in termination.refused)
                reason += termination.describe(guard.terminate_idle_after)
            # Growing pauses with jitter, so retries do not line up with the blocker's rhythm.
            pause = guard.retry_pause_seconds * (2 ** attempt) * (0.5 + random.random())
            reporter(LockRetry(attempt=attempt + 1, pause=pause, reason=reason, blockers=seen))
            time.sleep(pause)
    raise AssertionError("unreachable")


def _settings_hint(guard: GuardSettings) -> str:
    """The settings a refusal points to; never one that is already on as the fix."""
    hint = "MIGRATION_LOCK_TIMEOUT, MIGRATION_LOCK_RETRIES; MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER"
    if guard.terminate_idle_after:
        return (f"{hint}={guard.terminate_idle_after:g}s is on: it ends only an application's session idle in its "
                "transaction that long, never one running a query nor the engine's or a backfill's own")
    return f"{hint} ends sessions idle in a transaction"
