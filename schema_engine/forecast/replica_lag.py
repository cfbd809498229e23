"""How far behind a revision puts the replica that follows the forecast's copy, in seconds.

Measured from both ends rather than read from ``pg_stat_replication.replay_lag`` (which the copy
computes from the replica's replies, and which goes NULL whenever the replica has caught up): each
sample reads the copy's WAL position and the replica's replay position, and keeps the copy's
positions with their times. The lag at a sample is how long ago the copy first had WAL the replica
has not replayed yet (0 when it has replayed everything the copy had). Lower bounds, to a sample's
interval; the revision's figure is the most seen from its start until the replica has replayed the
WAL it wrote.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

import psycopg

from schema_engine.errors import ForecastUnavailable, first_line

APPLICATION_NAME = "forecast_lag_sampler"
CATCH_UP_SECONDS = 600.0  # after the revision, how long to wait for the replica to replay it (a lower bound then)
_POLL = 0.05
_WAL = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
_REPLAYED = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"


class ReplicaLag:
    """Samples the copy's WAL position and its replica's replay position; keeps the most lag seen."""

    def __init__(self, copy: dict[str, str | int], replica: dict[str, str | int], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._copy = _connect(copy, "its copy")
        try:
            self._replica = _connect(replica, "its copy's replica")
        except ForecastUnavailable:
            self._copy.close()
            raise
        self._written: deque[tuple[float, int]] = deque()  # (time, the copy's WAL position), oldest first
        self.most = 0.0
        self.wal_position = 0

    def sample(self) -> None:
        """Read both positions once; the lag now counts toward ``most``."""
        now = self._clock()
        self.wal_position = _read(self._copy, _WAL, "its copy")
        self._written.append((now, self.wal_position))
        replayed = self.replayed()
        while self._written and self._written[0][1] <= replayed:  # replayed: no lag from it any more
            self._written.popleft()
        if self._written:  # the oldest WAL not replayed yet was there at that time
            self.most = max(self.most, now - self._written[0][0])

    def replayed(self) -> int:
        """The replica's replay position."""
        return int(_read(self._replica, _REPLAYED, "its copy's replica") or 0)

    def reset(self) -> None:
        """Start a revision's figure afresh (the WAL still to replay stays counted from when it was written)."""
        self.most = 0.0

    def catch_up(self, timeout: float = CATCH_UP_SECONDS) -> bool:
        """Keep sampling until the replica has replayed what the copy had written now; False if ``timeout`` passed
        first (``most`` is then a lower bound)."""
        self.sample()
        target, deadline = self.wal_position, self._clock() + timeout
        while self.replayed() < target:
            if self._clock() >= deadline:
                return False
            time.sleep(_POLL)
            self.sample()
        return True

    def close(self) -> None:
        self._copy.close()
        self._replica.close()


def _connect(conninfo: dict[str, str | int], what: str) -> psycopg.Connection:
    try:
        return psycopg.connect(**conninfo, autocommit=True, application_name=APPLICATION_NAME)
    except psycopg.Error as exc:
        raise ForecastUnavailable(f"the forecast could not reach {what}: {first_line(exc)}") from exc


def _read(conn: psycopg.Connection, sql: str, what: str) -> int | None:
    try:
        return conn.execute(sql).fetchone()[0]
    except psycopg.Error as exc:
        raise ForecastUnavailable(f"the forecast lost {what} while measuring replica lag: {first_line(exc)}") from exc
