"""The database's health as a backfill sees it, read while it runs, and what its workers do about it.

The invoking process reads these signals every ``POLL_SECONDS`` on its own connection and
shares its verdict with its workers (threads or forked processes) through ``Signals``; each
worker's ``throttle.Throttle`` turns it into waits and holds:

- sessions waiting on locks that backfill sessions hold (``pg_blocking_pids``): every worker
  halves its batch (shorter locks) and waits as long as its batch took;
- vacuum running on the table the backfill writes (``pg_stat_progress_vacuum``): every worker
  waits as long as its batch took (half speed), so vacuum keeps up with the dead rows;
- replica replay lag above ``BACKFILL_MAX_REPLICA_LAG`` (``schema_engine.replicas``: from
  ``pg_stat_replication``, or the replica itself for a role that may not read it): every worker
  holds before its next batch until the lag is back under half the limit;
- live traffic, other sessions at work on the database (``pg_stat_activity``): half the workers
  hold while there are any.

The last signal, a worker's own batch latency against ``BACKFILL_BATCH_SECONDS``, each worker
reads itself (``calls/backfill/pacing.py``). Workers find one another's sessions by their
``application_name`` (``APPLICATION_NAME``). On SQLite there is nothing to read.
"""
from __future__ import annotations

import collections
import multiprocessing
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from calls.backfill.sql import driver_sql
from schema_engine import replicas
from schema_engine.guard import BACKFILL_APPLICATION_NAME

POLL_SECONDS = 0.2

# Every backfill session's application_name: how the lock signal tells the backfill's sessions apart,
# and how the migration guard knows never to terminate one (defined there, beside the engine's own).
APPLICATION_NAME = BACKFILL_APPLICATION_NAME
# A note stays on the progress line this long after its signal ended, so that it can be read.
NOTE_SECONDS = 5.0

# The signals that slow a worker's batches (``BackfillResult.slowed``), and what each means.
SLOWING_SIGNALS = {"locks": "sessions waiting on its locks", "vacuum": "vacuum on the table",
                   "latency": "batches over the target duration",
                   "live": "live traffic (a fill works a quarter of the time beside it)"}

_FORK = multiprocessing.get_context("fork")

LOCK_WAITERS_SQL = f"""
SELECT count(*) FROM pg_stat_activity AS waiting
WHERE waiting.datname = current_database() AND waiting.wait_event_type = 'Lock'
  AND waiting.application_name <> '{APPLICATION_NAME}'
  AND EXISTS (SELECT 1 FROM pg_stat_activity AS holder
              WHERE holder.pid = ANY (pg_blocking_pids(waiting.pid)) AND holder.application_name = '{APPLICATION_NAME}')
"""
# Other sessions at work on this database: active now, or within the last second.
LIVE_SESSIONS_SQL = f"""
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND application_name <> '{APPLICATION_NAME}' AND (state = 'active' OR state_change > now() - interval '1 second')
"""
VACUUM_SQL = ("SELECT count(*) FROM pg_stat_progress_vacuum "
              "WHERE datname = current_database() AND relid = to_regclass({p})")
lsn_number = replicas.lsn_number


def refuse_blind_replica_brake(conn: sa.Connection, max_replica_lag: float) -> None:
    """Refuse, before a run is recorded, a replica brake that could not read the replicas' replay.

    It would hold the workers for ever: a replica whose replay it cannot read never catches up.
    """
    if max_replica_lag and conn.dialect.name == "postgresql":
        replicas.refuse_unreadable(conn, left="nothing was changed (BACKFILL_MAX_REPLICA_LAG=0 runs without the "
                                              "replica brake)")


@dataclass
class Signals:
    """The verdict the invoking process shares with its workers (threads or forked processes alike)."""

    hold: multiprocessing.sharedctypes.Synchronized = field(default_factory=lambda: _FORK.Value("b", False))
    slow: multiprocessing.sharedctypes.Synchronized = field(default_factory=lambda: _FORK.Value("b", False))
    lock_waits: multiprocessing.sharedctypes.Synchronized = field(default_factory=lambda: _FORK.Value("l", 0))
    # Workers numbered from this up hold: live traffic gets the cores they would take.
    workers_allowed: multiprocessing.sharedctypes.Synchronized = field(
        default_factory=lambda: _FORK.Value("i", 1 << 30))
    live: multiprocessing.sharedctypes.Synchronized = field(default_factory=lambda: _FORK.Value("b", False))


class ReplayClock:
    """How far behind in time the slowest replica is, from the primary's side only.

    Each reading remembers when the primary's WAL reached its position; a replica's lag is the
    age of the oldest position it has not replayed yet (0 if it has replayed everything). This
    holds while a replica's replay is stalled, when ``pg_stat_replication.replay_lag`` keeps its
    last value.
    """

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def lag(self, now: float, current: int, replayed: list[int]) -> float:
        if not self.samples or self.samples[-1][1] != current:
            self.samples.append((now, current))
        if not replayed:
            self.samples.clear()
            return 0.0
        slowest = min(replayed)
        while len(self.samples) > 1 and self.samples[1][1] <= slowest:
            self.samples.popleft()  # replayed everywhere: only the oldest unreplayed sample matters
        oldest, position = self.samples[0]
        if position <= slowest:
            return 0.0 if len(self.samples) == 1 else now - self.samples[1][0]
        return now - oldest


@dataclass(frozen=True)
class Reading:
    lock_waiters: int
    vacuums: int
    replica_lag: float  # seconds, the slowest replica's
    slowest_replica: str | None
    live_sessions: int = 0  # other sessions at work on the database


class HealthWatch:
    """Reads the signals for one backfill's table and sets ``Signals``; says why the backfill is slower."""

    def __init__(self, table: str, signals: Signals, max_replica_lag: float, workers: int = 1) -> None:
        self.table, self.signals, self.max_replica_lag, self.workers = table, signals, max_replica_lag, workers
        self.clock = ReplayClock()
        self.replays = replicas.ReplayReader()
        self.worst_replica_lag = 0.0
        self.held_seconds = 0.0
        self.judged: float | None = None
        self.noted: dict[str, tuple[str, float]] = {}  # signal -> (note, until)

    def read(self, conn: sa.Connection) -> Reading:
        (waiters,), = driver_sql(conn, LOCK_WAITERS_SQL, ())
        (vacuums,), = driver_sql(conn, VACUUM_SQL, (self.table,))
        (live,), = driver_sql(conn, LIVE_SESSIONS_SQL, ())
        current, replays = self.replays.read(conn)
        conn.rollback()
        now = time.monotonic()
        # A replica's reported lag keeps its last value for a while after it has caught up: it
        # counts only while the replica has something left to replay. One not yet reported (or no
        # longer readable) counts as having replayed nothing.
        standbys = [(name, position, reported if position < current else 0.0)
                    for name, position, reported in ((r.name, -1 if r.replayed is None else r.replayed, r.reported_lag)
                                                     for r in replays)]
        # The replicas' own reports (which grow for a stalled replica only when WAL or a status
        # message flows), and the clock's reading of what they have not replayed: the greater.
        lag = max([self.clock.lag(now, current, [position for _, position, _ in standbys]),
                   *(reported for _, _, reported in standbys)])
        slowest = max(standbys, key=lambda s: (s[2], -s[1]))[0] if standbys else None
        return Reading(waiters, vacuums, lag, slowest, live)

    def close(self) -> None:
        """End the connection kept to a replica standing in for one hidden from this role (``ReplayReader``)."""
        self.replays.close()

    def judge(self, reading: Reading) -> None:
        """Set the workers' signals from a reading, and the notes for the progress line."""
        now = time.monotonic()
        if self.signals.hold.value and self.judged is not None:
            self.held_seconds += now - self.judged
        self.judged = now
        self.worst_replica_lag = max(self.worst_replica_lag, reading.replica_lag)
        if reading.lock_waiters:
            with self.signals.lock_waits.get_lock():
                self.signals.lock_waits.value += 1
            self._note("locks", now, f"{reading.lock_waiters} session(s) waited on the backfill's locks: "
                                     "smaller batches")
        self.signals.slow.value = bool(reading.vacuums)
        if reading.vacuums:
            self._note("vacuum", now, f"vacuum is running on {self.table}: half speed")
        self._yield_to_traffic(reading, now)
        limit = self.max_replica_lag
        if limit and reading.replica_lag > limit:
            self.signals.hold.value = True
        elif reading.replica_lag <= limit / 2:
            self.signals.hold.value = False
        if self.signals.hold.value:
            self._note("replica", now, f"waiting: replica {reading.slowest_replica} is {reading.replica_lag:.1f}s "
                                       f"behind (BACKFILL_MAX_REPLICA_LAG {limit:g}s)")
        else:
            self.noted.pop("replica", None)  # a state, not an event: gone as soon as the workers go on

    def _yield_to_traffic(self, reading: Reading, now: float) -> None:
        """Half the workers hold while other sessions are at work: a steady share of the cores is theirs.

        Measured beside live writers (docs/benchmarks.md, "Backfill under live load"): holding half the workers
        kept the writers' p99 within twice their baseline, where waits after every batch of all the
        workers (the same CPU on average, in bursts) did not.
        """
        allowed = max(1, self.workers // 2) if reading.live_sessions else self.workers
        self.signals.live.value = bool(reading.live_sessions)
        if allowed != self.signals.workers_allowed.value:
            self.signals.workers_allowed.value = allowed
        if allowed < self.workers:
            self._note("workers", now, f"live traffic: {allowed} of {self.workers} workers")

    def note_slow_batch(self, seconds: float, target: float) -> None:
        self._note("latency", time.monotonic(), f"batches take {seconds:.2f}s against the {target:g}s target "
                                                "(BACKFILL_BATCH_SECONDS): smaller batches")

    def notes(self) -> list[str]:
        """What slows the backfill now (or did within ``NOTE_SECONDS``)."""
        now = time.monotonic()
        return [note for note, until in self.noted.values() if until >= now]

    def _note(self, signal: str, now: float, note: str) -> None:
        self.noted[signal] = (note, now + NOTE_SECONDS)
