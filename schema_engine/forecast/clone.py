"""A physical copy of a running primary, with its data, made without stopping anything; always removed afterwards.

``pg_basebackup --wal-method=stream`` (as ``scripts/topology`` makes its replica, without ``-R``:
the copy is a primary of its own, writable, following nothing) into this run's scratch folder,
then ``pg_ctl start`` (``server.py``, as the logical copy starts) with settings that keep it apart
from the source: a port of its own on 127.0.0.1 and a socket folder of its own, no archiving, no
synchronous standby to wait for, no SSL, its own log. Its ``pg_hba.conf`` is the source's (the
same roles and passwords answer), with one line before it: ``local all all trust`` on the socket
in the run's private folder, which only the server's OS user and root can reach; ``pgreplay``
connects there as each role it replays.

Before anything is copied: the role may stream a base backup (REPLICATION), the folder's disk has
room for the source's size and a headroom, the port is free. The copy is removed when the
``with`` block ends, whatever ended it (a failure, Ctrl-C, SIGTERM turned into Ctrl-C by the
command); a run killed before it could (SIGKILL) leaves its folder, and the next run removes it,
stopping its server or its ``pg_basebackup`` first (``leftovers.py``).
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import make_conninfo

from schema_engine import database
from schema_engine.errors import ForecastUnavailable, NotEnoughDisk, ReplicationRefused, first_line
from schema_engine.forecast import leftovers, programs, server
from schema_engine.forecast.programs import OsUser
from schema_engine.forecast.server import Clone, MiB
from schema_engine.progress import Event, Reporter, ignore

KIND = "clone"
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")


@dataclass(frozen=True)
class CloneStarted(Event):
    """The copy of the primary is being made into ``folder``."""

    source: str
    folder: str

    def describe(self) -> str:
        return f"copying {self.source} into {self.folder} (pg_basebackup)"


@dataclass(frozen=True)
class CloneReady(Event):
    """The copy answers on its port."""

    port: int
    bytes: int
    seconds: float

    def describe(self) -> str:
        return f"copy of the primary ready on port {self.port}: {self.bytes / MiB:,.1f} MiB in {self.seconds:.1f}s"


@dataclass(frozen=True)
class FollowerReady(Event):
    """A streaming replica of the copy answers on its port: the forecast measures the lag each revision causes."""

    port: int
    socket_folder: str
    seconds: float

    def describe(self) -> str:
        return f"a replica follows the copy on port {self.port} (made in {self.seconds:.1f}s)"


@dataclass(frozen=True)
class Follower:
    """A streaming replica of the copy, in the copy's folder, reached through its own private socket."""

    port: int
    folder: Path  # the copy's folder / "replica": data/, socket/, server.log
    user: str | None  # the source's role, as on the copy
    database: str

    @property
    def conninfo(self) -> dict[str, str | int]:
        info: dict[str, str | int] = {"host": str(self.folder / "socket"), "port": self.port, "dbname": self.database}
        if self.user:
            info["user"] = self.user
        return info


@dataclass(frozen=True)
class _Source:
    major: int
    bytes: int
    tablespaces: tuple[tuple[int, str], ...]  # (oid, location) of each tablespace outside the data folder


def remove_leftovers(root: Path | None = None, *, reporter: Reporter = ignore) -> tuple[Path, ...]:
    """Remove the copies killed runs left under ``root`` (their servers stopped first); return their folders."""
    return leftovers.remove_stale(root or leftovers.DEFAULT_ROOT, KIND, reporter=reporter)


@contextlib.contextmanager
def cloned(source: sa.URL | str | None = None, *, root: Path | None = None, port: int | None = None,
           bin_dir: Path | None = None, os_user: str | None = None, headroom: int | None = None,
           fast_checkpoint: bool = True, max_rate: str | None = None, settings: Mapping[str, str] | None = None,
           reporter: Reporter = ignore) -> Iterator[Clone]:
    """Copy the running primary at ``source`` into a scratch folder under ``root``, start it, yield it; remove it after.

    ``port``: the copy's port (default: a free one). ``bin_dir``: where PostgreSQL's server
    programs are (default: Debian's folder for the source's version). ``os_user``: who runs the
    copy's server when this process is root (default ``postgres``). ``headroom``: bytes to keep
    free beyond the source's size (default a tenth of it, at least 256 MiB). ``fast_checkpoint``:
    start the copy at once with an immediate checkpoint on the primary (an I/O burst there), or
    wait for its next spread one. ``max_rate``: pg_basebackup's ``--max-rate`` (e.g. ``50M``), to
    spare the primary's disks. ``settings``: more settings for the copy's server (e.g. a smaller
    ``shared_buffers`` than the source's, on a smaller host).
    """
    url = database.resolve_url(source)
    if url.get_backend_name() != "postgresql":
        raise ForecastUnavailable("a copy with data needs the PostgreSQL primary: the database URL names "
                                  f"{url.get_backend_name()}")
    extra = _checked_settings(settings or {})
    owner = programs.server_user(os_user)
    described = _read_source(url)
    basebackup = programs.program("pg_basebackup", major=described.major, bin_dir=bin_dir)
    pg_ctl = programs.program("pg_ctl", major=described.major, bin_dir=bin_dir)
    folder = server.claim_folder(root, KIND, owner=owner, source=url, size=described.bytes, headroom=headroom,
                                 needed_for="the primary's databases", port=port, reporter=reporter)
    try:
        started = time.perf_counter()
        reporter(CloneStarted(source=database.display_url(url), folder=str(folder)))
        env = programs.connection_environment(url, passfile_folder=folder, owner=owner)
        _copy(basebackup, url, folder=folder, owner=owner, env=env, source=described,
              fast_checkpoint=fast_checkpoint, max_rate=max_rate)
        port = server.start(pg_ctl, folder=folder, owner=owner, port=port, settings=extra)
        clone = _ready(url, folder=folder, port=port, owner=owner, started=started, source=described)
        reporter(CloneReady(port=clone.port, bytes=clone.bytes, seconds=clone.seconds))
        yield clone
    finally:
        server.stop(pg_ctl, folder=folder, owner=owner)
        leftovers.remove(folder)


@contextlib.contextmanager
def follower(copy: Clone, *, bin_dir: Path | None = None, headroom: int | None = None,
             reporter: Reporter = ignore) -> Iterator[Follower]:
    """Start a streaming replica of ``copy`` (a base backup of it, in its folder), yield it; stop it after.

    As a production replica follows its primary: ``pg_basebackup`` of the copy, then a standby
    streaming from it through the copy's private socket (``local replication all trust`` there), with
    hot standby and a reply each second. It needs the copy's size again on the same disk (checked).
    Removed with the copy's folder, also when this process is killed (``leftovers.remove`` stops
    every server in a folder).
    """
    owner = programs.server_user(copy.os_user)
    # As the copy's own superuser on its trusted socket: the source's role need not have REPLICATION
    # (a logical copy asks only SELECT of it) nor see pg_stat_replication's columns.
    superuser = copy.local_url.set(username=_superuser_of(copy.local_url))
    described = _read_source(superuser)
    basebackup = programs.program("pg_basebackup", major=described.major, bin_dir=bin_dir)
    pg_ctl = programs.program("pg_ctl", major=described.major, bin_dir=bin_dir)
    server.check_disk(copy.folder.parent, copy.bytes, headroom, needed_for="a replica of the copy")
    folder = copy.folder / "replica"
    folder.mkdir(mode=0o700)
    if not owner.is_me:
        os.chown(folder, owner.uid, owner.gid)
    started = time.perf_counter()
    try:
        env = programs.connection_environment(superuser, passfile_folder=folder, owner=owner)
        _copy(basebackup, superuser, folder=folder, owner=owner, env=env, source=described,
              fast_checkpoint=True, max_rate=None)
        server.write(folder / "data" / "standby.signal", "", owner=owner)
        primary = make_conninfo(host=str(copy.socket_folder), port=copy.port, user=superuser.username or "",
                                application_name="forecast_replica")
        port = server.start(pg_ctl, folder=folder, owner=owner, port=None, settings={
            "primary_conninfo": primary, "cluster_name": "forecast_replica", "hot_standby": "on",
            "wal_receiver_status_interval": "1s"}, what="the replica of the forecast's copy")
        replica = Follower(port=port, folder=folder, user=copy.url.username, database=copy.url.database or "postgres")
        _wait_streaming(copy, replica, superuser=superuser.username or "")
        _let_read_replicas(copy, superuser)
        reporter(FollowerReady(port=port, socket_folder=str(folder / "socket"), seconds=time.perf_counter() - started))
        yield replica
    finally:
        server.stop(pg_ctl, folder=folder, owner=owner)


def _wait_streaming(copy: Clone, replica: Follower, *, superuser: str) -> None:
    """Wait until the copy streams to the replica (it shows in the copy's pg_stat_replication)."""
    deadline = time.monotonic() + server.START_SECONDS
    try:
        with psycopg.connect(host=str(copy.socket_folder), port=copy.port, user=superuser,
                             dbname=replica.database, autocommit=True) as conn:
            while not conn.execute("SELECT count(*) FROM pg_stat_replication "
                                   "WHERE application_name = 'forecast_replica' AND state = 'streaming'").fetchone()[0]:
                if time.monotonic() > deadline:
                    said = server.log_problem(replica.folder / "server.log") or "it never streamed"
                    raise ForecastUnavailable(f"the replica of the forecast's copy did not follow it: {said}")
                time.sleep(0.05)
    except psycopg.Error as exc:
        raise ForecastUnavailable(f"the forecast lost its copy while its replica started: {first_line(exc)}") from exc


def _superuser_of(url: sa.URL) -> str:
    """The bootstrap superuser of the server at ``url`` (the role initdb made), by any role's reading."""
    with database.connect(url) as conn:
        return str(conn.execute(sa.text("SELECT rolname FROM pg_roles WHERE oid = 10")).scalar_one())


def _let_read_replicas(copy: Clone, superuser: sa.URL) -> None:
    """Let the copy's migration role see its replica in pg_stat_replication, on the copy only.

    Without pg_read_all_stats the upgrade's wait for replicas would ask DATABASE_REPLICA_URL instead,
    which is the production's replica and shares a physical copy's system identifier.
    """
    with database.connect(copy.local_url) as conn:
        role = str(conn.execute(sa.text("SELECT current_user")).scalar_one())
    with database.connect(superuser) as conn:
        if not conn.execute(sa.text("SELECT pg_has_role(:role, 'pg_read_all_stats', 'USAGE')"),
                            {"role": role}).scalar_one():
            conn.execute(sa.text(f"GRANT pg_read_all_stats TO {conn.dialect.identifier_preparer.quote(role)}"))
            conn.commit()


def _read_source(url: sa.URL) -> _Source:
    with database.connect(url) as conn:
        major = conn.execute(sa.text("SELECT current_setting('server_version_num')::int / 10000")).scalar_one()
        role, may = conn.execute(sa.text(
            "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")).one()
        if not may:
            raise ReplicationRefused(f"role {role} may not stream a copy of the primary (pg_basebackup needs the "
                                     f"REPLICATION attribute): run 'ALTER ROLE {role} REPLICATION' as a superuser, or "
                                     "use a role that has it")
        size = conn.execute(sa.text(
            "SELECT coalesce(sum(pg_database_size(oid)), 0) FROM pg_database "
            "WHERE has_database_privilege(oid, 'CONNECT')")).scalar_one()
        tablespaces = conn.execute(sa.text(
            "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace "
            "WHERE pg_tablespace_location(oid) <> ''")).all()
    return _Source(major=int(major), bytes=int(size), tablespaces=tuple((int(o), str(p)) for o, p in tablespaces))


def _checked_settings(settings: Mapping[str, str]) -> dict[str, str]:
    for name in settings:
        if not _SETTING_NAME.match(name):
            raise ForecastUnavailable(f"{name!r} is not a PostgreSQL setting's name: name settings as postgresql.conf "
                                      "does (e.g. shared_buffers)")
    return dict(settings)


def _copy(basebackup: Path, url: sa.URL, *, folder: Path, owner: OsUser, env: dict[str, str], source: _Source,
          fast_checkpoint: bool, max_rate: str | None) -> None:
    argv: list[str | Path] = [basebackup, "--pgdata", folder / "data", "--wal-method=stream", "--no-password",
                              f"--checkpoint={'fast' if fast_checkpoint else 'spread'}", "--no-sync",
                              "--no-manifest", "--label=reautomation forecast"]
    if max_rate:
        if not re.fullmatch(r"\d+[kM]?", max_rate):
            raise ForecastUnavailable(f"max rate {max_rate!r} is not pg_basebackup's: a number of kB/s, or with k or "
                                      "M (e.g. 50M)")
        argv.append(f"--max-rate={max_rate}")
    for oid, location in source.tablespaces:
        mapped = folder / "tablespaces" / str(oid)
        mapped.mkdir(parents=True, mode=0o700)
        if not owner.is_me:
            os.chown(mapped.parent, owner.uid, owner.gid)
            os.chown(mapped, owner.uid, owner.gid)
        argv.append(f"--tablespace-mapping={_escaped(location)}={_escaped(str(mapped))}")
    done = programs.run(argv, user=owner, env=env, cwd=folder)
    if done.returncode != 0:
        raise _copy_error(done.stderr, url, folder)


def _escaped(path: str) -> str:
    return path.replace("=", "\\=")


def _copy_error(stderr: str, url: sa.URL, folder: Path) -> ForecastUnavailable:
    role = url.username or "(the default role)"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = database.redact(next((line for line in lines if "error" in line.lower() or "fatal" in line.lower()),
                                lines[0] if lines else "no message"), url.password)
    if "no pg_hba.conf entry for replication connection" in stderr:
        return ReplicationRefused(f"the primary's pg_hba.conf lets role {role} connect, but not for replication: "
                                  f"add a line such as 'host replication {role} <this host's address>/32 "
                                  "scram-sha-256' there and reload it (SELECT pg_reload_conf())")
    if "must be superuser or replication role" in stderr or "permission denied to start WAL sender" in stderr:
        return ReplicationRefused(f"role {role} may not stream a copy of the primary: run 'ALTER ROLE {role} "
                                  "REPLICATION' as a superuser")
    if "max_wal_senders" in stderr:
        return ForecastUnavailable(f"the primary has no WAL sender free for the copy ({said}): raise max_wal_senders "
                                   "(a restart), or wait until a backup or a replica lets one go")
    if "No space left on device" in stderr:
        return NotEnoughDisk(f"the disk of {folder.parent} filled up while copying ({said}): free some space there, "
                             "or name a scratch folder on a larger disk", folder=str(folder.parent), needed=0, free=0)
    return ForecastUnavailable(f"pg_basebackup could not copy the primary: {said}")


def _ready(url: sa.URL, *, folder: Path, port: int, owner: OsUser, started: float, source: _Source) -> Clone:
    clean = {key: value for key, value in url.query.items()
             if key.lower() not in ("host", "hostaddr", "port", "sslmode", "sslrootcert", "sslcert", "sslkey",
                                    "service", "target_session_attrs")}
    tcp = url.set(host="127.0.0.1", port=port, query=clean)
    local = server.local_url(url.drivername, folder=folder, port=port, username=url.username, database=url.database)
    try:  # pg_ctl --wait saw it accept connections; this is ours, through the socket the replay uses
        psycopg.connect(host=str(folder / "socket"), port=port, user=url.username or None,
                        dbname=url.database or "postgres", connect_timeout=10).close()
    except psycopg.Error as exc:
        raise ForecastUnavailable(f"the copy of the primary started but does not answer: {first_line(exc)}") from exc
    return Clone(url=tcp, local_url=local, port=port, folder=folder, bytes=server.size(folder),
                 seconds=time.perf_counter() - started, os_user=owner.name, source_bytes=source.bytes)
