"""What a migration's session holds and who waits on it, sampled on the copy from a connection of its own.

Every ``interval`` seconds one query reads the relation locks granted to the migration's sessions
(``application_name`` ``migrate_schema@HOST``, as ``guard.py`` names them; only the forecast
migrates the copy) and the sessions waiting on a lock whose blockers include one of them
(``pg_blocking_pids``). A lock counts as held from the first sample that saw it to the last; a
waiting statement (its pid and ``query_start``) as waiting from its start to the last sample that
saw it wait. Sampling misses what is shorter than its interval: the figures are lower bounds.
When a replica follows the copy, its lag (``replica_lag.py``) is sampled at the same beat.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg

from schema_engine.errors import ForecastUnavailable, first_line
from schema_engine.forecast.replica_lag import ReplicaLag
from schema_engine.forecast.result import LockHeld
from schema_engine.guard import MIGRATION_APPLICATION_PREFIX

APPLICATION_NAME = "forecast_sampler"
DEFAULT_INTERVAL = 0.05
_SAMPLE = """
WITH migration AS (
    SELECT pid FROM pg_stat_activity
    WHERE application_name LIKE %(prefix)s AND pid <> pg_backend_pid() AND datname = current_database())
SELECT 'lock', l.mode, c.oid::regclass::text, coalesce(i.indrelid, c.oid)::regclass::text, NULL::int, NULL::float8
FROM pg_locks l JOIN migration m ON m.pid = l.pid JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_index i ON i.indexrelid = c.oid
WHERE l.locktype = 'relation' AND l.granted AND c.relnamespace <> 'pg_catalog'::regnamespace
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION ALL
SELECT 'wait', NULL, NULL, NULL, a.pid, extract(epoch FROM a.query_start)::float8
FROM pg_stat_activity a
WHERE a.wait_event_type = 'Lock' AND pg_blocking_pids(a.pid) && ARRAY(SELECT pid FROM migration)
"""


@dataclass
class Sampled:
    """What the samples saw: each lock's first and last sighting, each waiter's start and last sighting."""

    samples: int = 0
    locks: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (mode, relation) -> [first, last]
    waits: dict[tuple[int, float], float] = field(default_factory=dict)  # (pid, query_start epoch) -> last seen epoch
    tables: set[str] = field(default_factory=set)  # the tables of the relations locked (an index's table)

    def locks_held(self) -> tuple[LockHeld, ...]:
        return tuple(LockHeld(mode=mode, relation=relation, seconds=round(last - first, 3))
                     for (mode, relation), (first, last) in sorted(self.locks.items(), key=lambda kv: kv[0][1]))

    @property
    def waiting_statements(self) -> int:
        return len(self.waits)

    @property
    def longest_wait(self) -> float:
        return max((last - start for (_, start), last in self.waits.items()), default=0.0)


class LockSampler(threading.Thread):
    """Samples the copy until stopped; ``stop()`` returns what it saw."""

    def __init__(self, conninfo: dict[str, str | int], *, interval: float = DEFAULT_INTERVAL,
                 lag: ReplicaLag | None = None) -> None:
        super().__init__(daemon=True, name="forecast-lock-sampler")
        self._lag = lag  # sampled at the same beat, when a replica follows the copy
        self._conn = psycopg.connect(**conninfo, autocommit=True, application_name=APPLICATION_NAME)
        self._interval = interval
        self._done = threading.Event()
        self._error: psycopg.Error | ForecastUnavailable | None = None
        self.sampled = Sampled()

    def run(self) -> None:
        try:
            while True:
                self._sample()
                if self._done.wait(self._interval):
                    self._sample()  # a last look, after the migration ended
                    return
        except (psycopg.Error, ForecastUnavailable) as exc:  # handed to stop(): a failed sampler is not an idle one
            self._error = exc

    def _sample(self) -> None:
        rows = self._conn.execute(_SAMPLE, {"prefix": MIGRATION_APPLICATION_PREFIX + "%"}).fetchall()
        if self._lag is not None:
            self._lag.sample()
        now = time.time()
        self.sampled.samples += 1
        for kind, mode, relation, table, pid, started in rows:
            if kind == "lock":
                self.sampled.tables.add(table)
                seen = self.sampled.locks.setdefault((mode, relation), [now, now])
                seen[1] = now
            else:
                self.sampled.waits[(pid, started)] = now

    def stop(self) -> Sampled:
        self._done.set()
        self.join()
        self._conn.close()
        if isinstance(self._error, ForecastUnavailable):  # the replica's lag, already said in one line
            raise self._error
        if self._error is not None:
            raise ForecastUnavailable(f"the forecast could not sample the copy's locks: {first_line(self._error)}")
        return self.sampled
