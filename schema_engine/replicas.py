"""The primary's streaming replicas: who they are, how far behind, and waiting for them to catch up.

Read from the primary (``pg_stat_replication``: every replica streaming from it) and from a
replica itself (``DATABASE_REPLICA_URL``: its own replay lag and the revision it has replayed).
A replica that is disconnected does not appear in ``pg_stat_replication``; the application's
router finds it down and reads from the primary (``reautomation/replica_reads.py``).

A role without ``pg_monitor`` (managed PostgreSQL services give such roles) sees a row per
replica in ``pg_stat_replication`` but NULL in every column that tells its replay. The replica at
``DATABASE_REPLICA_URL`` then tells its own (``pg_last_wal_replay_lsn()`` needs no privilege),
once it is shown to be a replica of this primary (the same ``system_identifier``) and the only one
streaming. Otherwise ``ReplicasUnreadable`` names the grant: the upgrade refuses before it applies
anything, ``plan`` counts it a problem, and no replica is reported "0.0s behind" unread.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa
from django.conf import settings

from schema_engine import database
from schema_engine.errors import ReplicasBehind, ReplicasUnreadable, first_line

POLL_SECONDS = 0.1
# DATABASE_REPLICA_URL's entry in settings.DATABASES (reautomation/settings.py).
REPLICA_ALIAS = "replica"


@dataclass(frozen=True)
class Replica:
    """One replica streaming from the primary, as the primary sees it (or, for a role that may not see that, itself)."""

    name: str  # its application_name, and the address it connects from
    state: str | None  # streaming, catchup, ...; None: hidden from this role
    replay_lag: float | None  # seconds, as it last reported (0 when it has replayed everything); None: hidden
    bytes_behind: int | None  # WAL the primary has written that it has not replayed; None: hidden

    @property
    def readable(self) -> bool:
        return self.state is not None

    def __str__(self) -> str:
        if not self.readable:
            return f"{self.name}: its replay is hidden from this role (pg_stat_replication shows it to pg_monitor)"
        return (f"{self.name}: {self.state}, {self.replay_lag:.1f}s behind "
                f"({self.bytes_behind:,} bytes of WAL not replayed)")


@dataclass(frozen=True)
class Replay:
    """What one replica has replayed, read as often as an upgrade or a backfill waits on it."""

    name: str
    readable: bool  # False: hidden from this role, and DATABASE_REPLICA_URL does not stand in for it
    replayed: int | None  # WAL position (``lsn_number``); None until it reports one, or hidden
    reported_lag: float  # seconds, as it last reported


@dataclass(frozen=True)
class ReplicaView:
    """A replica as it sees itself (``DATABASE_REPLICA_URL``): reachable, its lag, the revision it has replayed."""

    url: str  # for display: no password
    reachable: bool
    lag: float | None  # seconds behind the primary's last commit it has received; 0 when it has replayed all
    revisions: tuple[str, ...]
    error: str | None = None


# Without pg_monitor, a row keeps its pid and application_name; the rest reads NULL.
_NAME_SQL = ("coalesce(nullif(application_name, ''), 'replica') || ' (' || "
             "CASE WHEN state IS NULL THEN 'address hidden' ELSE coalesce(host(client_addr), 'local') END || ')'")
# replay_lag keeps its last value for a while after a replica has caught up: with nothing left to
# replay, the replica is 0 s behind.
REPLICAS_SQL = f"""
SELECT {_NAME_SQL},
       state,
       CASE WHEN state IS NULL THEN NULL WHEN replay_lsn >= pg_current_wal_lsn() THEN 0
            ELSE coalesce(EXTRACT(epoch FROM replay_lag), 0) END::float8,
       CASE WHEN state IS NOT NULL THEN coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0) END::bigint
FROM pg_stat_replication ORDER BY 1
"""
REPLAY_SQL = (f"SELECT {_NAME_SQL}, state IS NOT NULL, replay_lsn::text, "
              "coalesce(EXTRACT(epoch FROM replay_lag), 0)::float8 FROM pg_stat_replication ORDER BY 1")
# The server's WAL position: a primary's written, a (cascading) replica's replayed.
POSITION_SQL = ("SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                "ELSE pg_current_wal_lsn() END)::text")
# On a replica: how far behind in time. Nothing received and not replayed means caught up, however
# old its last replayed commit (an idle primary writes none).
_OWN_LAG_SQL = """CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8"""
OWN_LAG_SQL = f"SELECT pg_is_in_recovery(), {_OWN_LAG_SQL}"
# Both need no privilege: whose replica a server is, and what it has replayed.
SYSTEM_SQL = "SELECT (SELECT system_identifier FROM pg_control_system()), pg_is_in_recovery()"
OWN_REPLAY_SQL = (f"SELECT pg_is_wal_replay_paused(), pg_last_wal_replay_lsn()::text, {_OWN_LAG_SQL} "
                  "WHERE pg_is_in_recovery()")


def lsn_number(lsn: str) -> int:
    """PostgreSQL's text form of a WAL position (``16/B374D848``) as a number."""
    high, low = lsn.split("/")
    return int(high, 16) << 32 | int(low, 16)


def replica_url() -> sa.URL | None:
    """``DATABASE_REPLICA_URL`` as the settings hold it, or None."""
    found = settings.DATABASES.get(REPLICA_ALIAS)
    return database.sqlalchemy_url(found) if found else None


class ReplayReader:
    """Reads what each replica streaming from the primary has replayed, as often as asked.

    From ``pg_stat_replication``; for a role that may not read it there, from the replica at
    ``DATABASE_REPLICA_URL`` itself, on a connection kept between reads (``close`` ends it).
    ``unusable`` says why that replica cannot stand in, when it cannot.
    """

    def __init__(self) -> None:
        self._engine: sa.Engine | None = None
        self._standby: sa.Connection | None = None
        self.stand_in_name = ""  # the replica standing in, for display
        self.unusable = ""

    def __enter__(self) -> ReplayReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._standby is not None:
            self._standby.close()
        if self._engine is not None:
            self._engine.dispose()
        self._engine = self._standby = None

    def read(self, conn: sa.Connection) -> tuple[int, list[Replay]]:
        """Return the primary's WAL position and each replica's replay (leaves ``conn``'s transaction to the caller)."""
        current = lsn_number(conn.exec_driver_sql(POSITION_SQL).scalar_one())
        replays = [Replay(name, readable, lsn_number(replayed) if replayed else None, lag)
                   for name, readable, replayed, lag in conn.exec_driver_sql(REPLAY_SQL)]
        hidden = [replay for replay in replays if not replay.readable]
        own = self.stand_in(conn, len(hidden)) if hidden else None
        if own is not None:
            _paused, replayed, lag = own
            replays = [Replay(self.stand_in_name, True, replayed, lag) if not r.readable else r for r in replays]
        return current, replays

    def stand_in(self, conn: sa.Connection, hidden: int) -> tuple[bool, int, float] | None:
        """The replica at ``DATABASE_REPLICA_URL``'s own (paused, replayed, lag),
        for the one replica hidden, or None."""
        if self._standby is None and not self._open(conn, hidden):
            return None
        assert self._standby is not None
        try:
            row = self._standby.exec_driver_sql(OWN_REPLAY_SQL).first()
            self._standby.rollback()
        except sa.exc.DBAPIError as exc:
            self.unusable = f"DATABASE_REPLICA_URL stopped answering: {first_line(exc)}"
            self.close()
            return None
        if row is None:  # promoted meanwhile
            self.unusable = "DATABASE_REPLICA_URL is no longer in recovery"
            self.close()
            return None
        paused, replayed, lag = row
        return paused, lsn_number(replayed), lag

    def _open(self, conn: sa.Connection, hidden: int) -> bool:
        url = replica_url()
        if url is None or url.get_backend_name() != "postgresql":
            self.unusable = "DATABASE_REPLICA_URL is not set"
            return False
        shown = database.display_url(url)
        if hidden > 1:
            self.unusable = f"DATABASE_REPLICA_URL reaches one of the {hidden} replicas"
            return False
        primary, _ = conn.exec_driver_sql(SYSTEM_SQL).one()
        engine = database.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            standby = engine.connect()
            system, in_recovery = standby.exec_driver_sql(SYSTEM_SQL).one()
            standby.rollback()
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            self.unusable = f"DATABASE_REPLICA_URL: {database.unreachable_message(url, exc)}"
            return False
        if system != primary or not in_recovery:
            standby.close()
            engine.dispose()
            self.unusable = f"DATABASE_REPLICA_URL {shown} is not a replica of this primary"
            return False
        self._engine, self._standby, self.unusable = engine, standby, ""
        self.stand_in_name = f"{url.host or 'local'}:{url.port or 5432} (DATABASE_REPLICA_URL)"
        return True


def replicas(conn: sa.Connection) -> list[Replica]:
    """The replicas streaming from ``conn``'s server (none on SQLite).

    One hidden from this role is told by the replica at ``DATABASE_REPLICA_URL`` when that stands in for it.
    """
    if conn.dialect.name != "postgresql":
        return []
    seen = [Replica(*row) for row in conn.exec_driver_sql(REPLICAS_SQL)]
    hidden = [replica for replica in seen if not replica.readable]
    if not hidden:
        return seen
    with ReplayReader() as reader:
        own = reader.stand_in(conn, len(hidden))
        name = reader.stand_in_name
    if own is None:
        return seen
    paused, replayed, lag = own
    current = lsn_number(conn.exec_driver_sql(POSITION_SQL).scalar_one())
    return [Replica(name, "replay paused" if paused else "replaying", 0.0 if replayed >= current else lag,
                    max(0, current - replayed))]


def unreadable_problem(conn: sa.Connection) -> str | None:
    """Why this role cannot tell what the replicas have replayed, in one line naming the grant; None when it can."""
    if conn.dialect.name != "postgresql":
        return None
    with ReplayReader() as reader:
        _current, replays = reader.read(conn)
    return _unreadable(conn, replays, reader)


def refuse_unreadable(conn: sa.Connection, *, left: str) -> None:
    """Raise ``ReplicasUnreadable`` (saying what was ``left``) when this role cannot tell what the replicas replayed."""
    problem = unreadable_problem(conn)
    if problem:
        raise ReplicasUnreadable(f"{problem}; {left}")


def monitor_grant(conn: sa.Connection) -> str:
    """Return the statement a superuser runs so that ``conn``'s role may read the replicas' replay."""
    role = conn.exec_driver_sql("SELECT current_user").scalar_one()
    return f"GRANT pg_monitor TO {conn.dialect.identifier_preparer.quote(role)}"


def _unreadable(conn: sa.Connection, replays: list[Replay], reader: ReplayReader) -> str | None:
    hidden = sum(not replay.readable for replay in replays)
    if not hidden:
        return None
    role = conn.exec_driver_sql("SELECT current_user").scalar_one()
    return (f"{hidden} replica(s) stream from this primary, and role {role} may not read their replay in "
            f"pg_stat_replication: run '{monitor_grant(conn)}' as a superuser, or point "
            f"DATABASE_REPLICA_URL at the replica ({reader.unusable})")


def wait_for_replicas(conn: sa.Connection, timeout: float, *, what: str,
                      on_wait: Callable[[list[Replica]], None] | None = None) -> list[Replica]:
    """Wait until every replica streaming from ``conn``'s server has replayed its WAL up to now.

    Bounded by ``timeout`` seconds, past which ``ReplicasBehind`` names the replicas still behind
    and ``what`` they have not replayed; ``ReplicasUnreadable`` at once when this role cannot tell.
    ``on_wait`` hears once of the replicas being waited for. Returns the replicas waited for
    (none on SQLite or without replicas).
    """
    if conn.dialect.name != "postgresql":
        return []
    with ReplayReader() as reader:
        target, replays = reader.read(conn)
        problem = _unreadable(conn, replays, reader)
        conn.commit()
        if problem:
            raise ReplicasUnreadable(problem)
        deadline, told = time.monotonic() + timeout, False
        while True:
            behind = tuple(r.name for r in replays if r.replayed is None or r.replayed < target)
            if not behind:
                return replicas(conn)
            if time.monotonic() >= deadline:
                raise ReplicasBehind(
                    f"replica {', '.join(behind)} has not replayed {what} within {timeout:g}s; check its replay "
                    "('scripts/topology status', pg_stat_replication) and rerun, "
                    "or raise MIGRATION_REPLICA_WAIT_SECONDS",
                    replicas=behind)
            if on_wait and not told:
                told = True
                on_wait(replicas(conn))
                conn.commit()
            time.sleep(POLL_SECONDS)
            _current, replays = reader.read(conn)
            conn.commit()


def replica_view(url: sa.URL, connect_timeout: int = 3) -> ReplicaView:
    """How the replica at ``url`` sees itself; unreachable (with the reason) rather than an error."""
    shown = database.display_url(url)
    engine = database.create_engine(url, connect_args={"connect_timeout": connect_timeout})
    try:
        with engine.connect() as conn:
            in_recovery, lag = conn.exec_driver_sql(OWN_LAG_SQL).one()
            try:
                with conn.begin_nested():
                    revisions = tuple(sorted(
                        r for r, in conn.exec_driver_sql("SELECT version_num FROM alembic_version")))
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
