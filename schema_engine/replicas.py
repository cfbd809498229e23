"""The primary's streaming replicas: who they are, how far behind, and waiting for them to catch up.

Read from the primary (``pg_stat_replication``: every replica streaming from it) and from a
replica itself (``DATABASE_REPLICA_URL``: its own replay lag and the revision it has replayed).
A replica that is disconnected does not appear in ``pg_stat_replication``; the application's
router finds it down and reads from the primary (``reautomation/replica_reads.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from schema_engine import database
from schema_engine.errors import ReplicasBehind, first_line

POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Replica:
    """One replica streaming from the primary, as the primary sees it."""

    name: str  # its application_name, and the address it connects from
    state: str  # streaming, catchup, ...
    replay_lag: float  # seconds, as it last reported (0 when it has replayed everything)
    bytes_behind: int  # WAL the primary has written that it has not replayed


@dataclass(frozen=True)
class ReplicaView:
    """A replica as it sees itself (``DATABASE_REPLICA_URL``): reachable, its lag, the revision it has replayed."""

    url: str  # for display: no password
    reachable: bool
    lag: float | None  # seconds behind the primary's last commit it has received; 0 when it has replayed all
    revisions: tuple[str, ...]
    error: str | None = None


# replay_lag keeps its last value for a while after a replica has caught up: with nothing left to
# replay, the replica is 0 s behind.
REPLICAS_SQL = """
SELECT coalesce(nullif(application_name, ''), 'replica') || ' (' || coalesce(host(client_addr), 'local') || ')',
       state,
       CASE WHEN replay_lsn >= pg_current_wal_lsn() THEN 0 ELSE coalesce(EXTRACT(epoch FROM replay_lag), 0) END::float8,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
FROM pg_stat_replication ORDER BY 1
"""
# On a replica: how far behind in time. Nothing received and not replayed means caught up, however
# old its last replayed commit (an idle primary writes none).
OWN_LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8
"""


def replicas(conn: sa.Connection) -> list[Replica]:
    """The replicas streaming from ``conn``'s server (none on SQLite)."""
    if conn.dialect.name != "postgresql":
        return []
    return [Replica(*row) for row in conn.exec_driver_sql(REPLICAS_SQL)]


def wait_for_replicas(conn: sa.Connection, timeout: float, *, what: str,
                      on_wait: Callable[[list[Replica]], None] | None = None) -> list[Replica]:
    """Wait until every replica streaming from ``conn``'s server has replayed its WAL up to now.

    Bounded by ``timeout`` seconds, past which ``ReplicasBehind`` names the replicas still behind
    and ``what`` they have not replayed. ``on_wait`` hears once of the replicas being waited for.
    Returns the replicas waited for (none on SQLite or without replicas).
    """
    if conn.dialect.name != "postgresql":
        return []
    target = conn.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar_one()
    conn.commit()
    deadline, told = time.monotonic() + timeout, False
    query = sa.text(
        "SELECT coalesce(nullif(application_name, ''), 'replica') || ' (' || coalesce(host(client_addr), 'local') "
        "|| ')', coalesce(replay_lsn >= CAST(:target AS pg_lsn), false) FROM pg_stat_replication")
    while True:
        rows = conn.execute(query, {"target": target}).all()
        conn.commit()
        behind = tuple(name for name, replayed in rows if not replayed)
        if not behind:
            return replicas(conn)
        if time.monotonic() >= deadline:
            raise ReplicasBehind(
                f"replica {', '.join(behind)} has not replayed {what} within {timeout:g}s; check its replay "
                "('scripts/topology status', pg_stat_replication) and rerun, or raise MIGRATION_REPLICA_WAIT_SECONDS",
                replicas=behind)
        if on_wait and not told:
            told = True
            on_wait(replicas(conn))
        time.sleep(POLL_SECONDS)


def replica_view(url: sa.URL, connect_timeout: int = 3) -> ReplicaView:
    """How the replica at ``url`` sees itself; unreachable (with the reason) rather than an error."""
    shown = database.display_url(url)
    engine = database.create_engine(url, connect_args={"connect_timeout": connect_timeout})
    try:
        with engine.connect() as conn:
            in_recovery, lag = conn.exec_driver_sql(OWN_LAG_SQL).one()
            try:
                with conn.begin_nested():
                    revisions = tuple(sorted(r for r, in conn.exec_driver_sql("SELECT version_num FROM alembic_version")))
            except sa.exc.ProgrammingError:
                revisions = ()
            conn.rollback()
        if not in_recovery:
            return ReplicaView(shown, True, None, revisions, "not a replica: it is not in recovery")
        return ReplicaView(shown, True, lag, revisions)
    except sa.exc.DBAPIError as exc:
        return ReplicaView(shown, False, None, (), first_line(exc))
    finally:
        engine.dispose()
