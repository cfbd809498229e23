"""One pending revision applied to the copy while its locks, the waits they cause, its WAL and its tables are measured.

The revision runs through ``commands.upgrade`` on the copy, with every guard the deploy meets (as
``rehearsal.py`` applies its revisions). Around it, on connections of their own: the WAL position
and each table's ``relfilenode`` and total size (``pg_total_relation_size``: heap, indexes, TOAST)
before and after, and the lock sampler (``sampler.py``) while it runs. The WAL figure is the
copy's, so it counts the replayed traffic's writes during the revision too; so does the lag of a
replica following the copy (``replica_lag.py``), which is what a production replica would feel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import psycopg
import sqlalchemy as sa
from alembic.script import Script

from schema_engine import commands
from schema_engine.errors import Interrupted, SchemaError, first_line
from schema_engine.forecast.replica_lag import CATCH_UP_SECONDS, ReplicaLag
from schema_engine.forecast.result import RevisionForecast
from schema_engine.forecast.sampler import DEFAULT_INTERVAL, LockSampler
from schema_engine.progress import Event, Reporter

_TABLES = """
SELECT c.oid, c.oid::regclass::text, c.relfilenode, pg_total_relation_size(c.oid)
FROM pg_class c
WHERE c.relkind IN ('r', 'p', 'm')
  AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  AND c.relpersistence <> 't'
"""


@dataclass(frozen=True)
class ReplicaBehind(Event):
    """The copy's replica had not replayed a revision's WAL within ``CATCH_UP_SECONDS``: its figure is a lower bound."""

    revision: str
    seconds: float

    def describe(self) -> str:
        return (f"the copy's replica had not replayed {self.revision} after {CATCH_UP_SECONDS:g}s: its replica lag "
                f"({self.seconds:.1f}s) is a lower bound")


@dataclass(frozen=True)
class _Table:
    name: str
    relfilenode: int
    bytes: int


@dataclass(frozen=True)
class _State:
    lsn: str
    tables: dict[int, _Table]


def _state(conn: psycopg.Connection) -> _State:
    lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    tables = {oid: _Table(name, node, size) for oid, name, node, size in conn.execute(_TABLES).fetchall()}
    return _State(lsn=lsn, tables=tables)


def measure_revision(script: Script, *, url: sa.URL, conninfo: dict[str, str | int], began: float,
                     clock: Callable[[], float] = time.monotonic, reporter: Reporter,
                     interval: float = DEFAULT_INTERVAL, lag: ReplicaLag | None = None) -> RevisionForecast:
    """Apply ``script`` (the next pending revision) to the copy at ``url``, measured; ``began``: the replay's start.

    ``lag``: the replica following the copy, if one does: the most lag from the revision's start
    until the replica has replayed what it wrote is its ``replica_lag``.

    A revision that fails there is returned with its one line in ``error`` (what it did until then is measured).
    Its latencies before it (``p50_before``, ``p99_before``) are the caller's to fill: a replay's are read after.
    """
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        before = _state(conn)
        started_at = [clock()]

        def heard(event: Event) -> None:
            if isinstance(event, commands.RevisionStarted) and event.revision == script.revision:
                started_at[0] = clock()  # the revision itself, after the guards' checks
            reporter(event)

        if lag is not None:
            lag.reset()
        sampler = LockSampler(conninfo, interval=interval, lag=lag)
        sampler.start()
        error = ""
        try:
            commands.upgrade(revision=script.revision, url=url, reporter=heard)
        except Interrupted:
            raise  # Ctrl-C: the forecast ends (its copy and traffic with it), not this revision alone
        except SchemaError as exc:
            error = first_line(exc)
        finally:
            ended = clock()
            sampled = sampler.stop()
        after = _state(conn)
        if lag is not None and not lag.catch_up():
            reporter(ReplicaBehind(revision=script.revision, seconds=lag.most))
        wal = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (after.lsn, before.lsn)
                           ).fetchone()[0]
    rewritten = sorted(table.name for oid, table in after.tables.items()
                       if oid in before.tables and before.tables[oid].relfilenode != table.relfilenode)
    touched = set(sampled.tables) | set(rewritten)
    touched |= {table.name for oid, table in after.tables.items() if oid not in before.tables}  # created
    touched |= {table.name for oid, table in before.tables.items() if oid not in after.tables}  # dropped
    size_change = sum(_size(after, name) - _size(before, name) for name in touched)
    return RevisionForecast(
        revision=script.revision, doc=script.doc or "", started=round(started_at[0] - began, 3),
        seconds=round(ended - started_at[0], 3), locks=sampled.locks_held(),
        waiting_statements=sampled.waiting_statements, longest_wait=round(sampled.longest_wait, 3),
        p50_before=None, p99_before=None, wal_bytes=int(wal), rewritten=tuple(rewritten),
        size_change=size_change, replica_lag=None if lag is None else round(lag.most, 3), error=error)


def _size(state: _State, name: str) -> int:
    return next((table.bytes for table in state.tables.values() if table.name == name), 0)
