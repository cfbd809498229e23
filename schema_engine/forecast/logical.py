"""A logical copy: chosen tables, their newest rows up to a limit, and every row those reference; removed afterwards.

Where the operator says so (a primary too big to copy whole, a role without REPLICATION), the
forecast runs on this instead of ``clone.py``'s physical copy. It yields the same ``Clone``, so
the replay, the measures and the latencies run on it unchanged. In order:

1. A scratch cluster: ``initdb`` (the source's major version) in the run's folder, its bootstrap
   superuser named as the source's, started as ``server.py`` starts every copy but listening on
   its private socket only (``local all all trust``): its roles have no passwords.
2. Roles: every role of the source that is not PostgreSQL's own and that can log in, or owns
   something in the source database or is granted something there (pg_shdepend), with its
   attributes (LOGIN, SUPERUSER, INHERIT, ...) and the memberships between them and in
   PostgreSQL's predefined roles; no passwords, nor role-wide settings (``ALTER ROLE ... SET``).
   A capture replays as its own roles, with their privileges.
3. The schema: ``pg_dump --schema-only`` of the source database, in one snapshot with the rows
   (``pg_export_snapshot``), restored by ``pg_restore`` with owners and grants kept (the roles
   exist) and the database's own settings (``--create``): its encoding and locale, its
   ``ALTER DATABASE``/``ALTER ROLE ... IN DATABASE`` settings. Tablespaces, security labels and
   subscriptions are left out (the copy has none of them; a subscription would reach back to its
   publisher). Indexes, constraints and triggers (the post-data section) come after the rows.
4. The rows, streamed with ``COPY (SELECT ...) TO STDOUT`` into ``COPY ... FROM STDIN`` in one
   read-only REPEATABLE READ transaction on the source: each table named, its newest
   ``row_limit`` rows by primary key; each table the models do not declare (``alembic_version``,
   the checksums, the expands' bookkeeping, archives, tables of the operator's own) whole, unless
   named; every row the copied rows reference through a foreign key, transitively (so every
   constraint holds, and a revision that validates one behaves as on the source); the other
   tables empty. Each sequence is set to the source's value.
5. ``VACUUM (ANALYZE)``: statistics for the planner, and the hint bits and visibility map a
   long-lived table has, so a revision does not pay for the first read of freshly loaded rows.

The copy is removed when the ``with`` block ends, whatever ended it; a run killed before it
could leaves its folder, and the next logical copy removes it (``leftovers.py``).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Sequence

import psycopg
import sqlalchemy as sa
from psycopg import sql

from schema_engine import database
from schema_engine.backup import tool_error
from schema_engine.errors import ForecastUnavailable, LogicalCopyRefused, TablesUnreadable, first_line
from schema_engine.forecast import leftovers, programs, server
from schema_engine.forecast.programs import OsUser
from schema_engine.forecast.server import Clone, MiB
from schema_engine.metadata import build_metadata
from schema_engine.progress import Event, Reporter, ignore

KIND = "logical"
DEFAULT_ROW_LIMIT = 100_000  # rows of each named table when the operator names none (migrate_schema forecast --rows)
FIRST_ROLE_OID = 16384  # FirstNormalObjectId: below it, the bootstrap superuser and PostgreSQL's predefined roles
KEYS_PER_STATEMENT = 10_000  # referenced rows looked up on the source per statement
APPLICATION_NAME = "reautomation forecast copy"  # what the source's pg_stat_activity shows of the copy's sessions
DUMP_FILE = "schema.dump"
# CREATE ROLE's keyword for each attribute copied, when the source's role has it and when not.
_ROLE_ATTRIBUTES = (("rolsuper", "SUPERUSER", "NOSUPERUSER"), ("rolinherit", "INHERIT", "NOINHERIT"),
                    ("rolcreaterole", "CREATEROLE", "NOCREATEROLE"), ("rolcreatedb", "CREATEDB", "NOCREATEDB"),
                    ("rolcanlogin", "LOGIN", "NOLOGIN"), ("rolreplication", "REPLICATION", "NOREPLICATION"),
                    ("rolbypassrls", "BYPASSRLS", "NOBYPASSRLS"))
_NOT_AN_EXTENSION_S = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
                       "AND d.objid = c.oid AND d.deptype = 'e')")
_USER_RELATION = ("c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                  f"AND n.nspname NOT LIKE 'pg\\_toast%' AND {_NOT_AN_EXTENSION_S}")
# Every table a copy can hold: plain and partitioned ones (a partition's rows go through its parent).
_TABLES = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind = 'p', has_table_privilege(c.oid, 'SELECT'),
       pg_total_relation_size(c.oid), c.reltuples,
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum),
       ARRAY(SELECT a.attname::text FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, position)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.position)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER_RELATION}
"""
_SEQUENCES = f"""
SELECT n.nspname, c.relname, has_sequence_privilege(c.oid, 'SELECT, USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND {_USER_RELATION}
"""
_FOREIGN_KEYS = """
SELECT conrelid,
       ARRAY(SELECT a.attname::text FROM unnest(conkey) WITH ORDINALITY k(attnum, position)
             JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.attnum ORDER BY k.position),
       confrelid,
       ARRAY(SELECT a.attname::text FROM unnest(confkey) WITH ORDINALITY k(attnum, position)
             JOIN pg_attribute a ON a.attrelid = confrelid AND a.attnum = k.attnum ORDER BY k.position)
FROM pg_constraint WHERE contype = 'f' AND conparentid = 0
"""
_ROLES = f"""
WITH here AS (SELECT oid FROM pg_database WHERE datname = current_database())
SELECT r.rolname, {", ".join(f"r.{attribute}" for attribute, _, _ in _ROLE_ATTRIBUTES)}
FROM pg_roles r, here
WHERE r.oid >= {FIRST_ROLE_OID} AND (r.rolcanlogin OR EXISTS (
    SELECT 1 FROM pg_shdepend d WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid
    AND (d.dbid = here.oid OR (d.dbid = 0 AND d.classid = 'pg_database'::regclass AND d.objid = here.oid))))
ORDER BY r.rolname
"""
_MEMBERSHIPS = """
SELECT DISTINCT g.rolname, g.oid < %s, m.rolname, bool_or(a.admin_option) OVER (PARTITION BY g.oid, m.oid)
FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
WHERE g.oid <> 10
ORDER BY 1, 3
"""


@dataclass(frozen=True)
class LogicalCopyStarted(Event):
    """The logical copy of chosen tables is being made into ``folder``."""

    source: str
    folder: str
    tables: tuple[str, ...]
    row_limit: int

    def describe(self) -> str:
        return (f"copying the schema of {self.source}, the newest {self.row_limit:,} rows of {', '.join(self.tables)} "
                f"and the rows they reference into {self.folder} (a logical copy)")


@dataclass(frozen=True)
class LogicalCopyReady(Event):
    """The logical copy answers on its socket: what it holds, what it cost."""

    port: int
    bytes: int
    seconds: float
    rows: tuple[tuple[str, int], ...]  # (table, rows copied), each table that got rows

    def describe(self) -> str:
        rows = ", ".join(f"{table} {count:,}" for table, count in self.rows) or "none"
        return (f"logical copy ready on port {self.port}: {self.bytes / MiB:,.1f} MiB in {self.seconds:.1f}s; "
                f"rows: {rows}")


@dataclass(frozen=True)
class _Table:
    oid: int
    schema: str
    name: str
    partitioned: bool  # its rows are in its partitions: read and written through it, never ONLY
    readable: bool  # the role may SELECT from it
    bytes: int
    estimated_rows: float  # the planner's (reltuples); below 0 when never analyzed
    columns: tuple[str, ...]  # all but generated ones, which the copy computes
    key: tuple[str, ...]  # its primary key; () when it has none

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def select(self, *columns: str) -> sql.Composed:
        return sql.SQL("SELECT {} FROM {}{}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns or self.columns)),
            sql.SQL("" if self.partitioned else "ONLY "), self.identifier)


@dataclass(frozen=True)
class _ForeignKey:
    child: int
    columns: tuple[str, ...]
    parent: int
    referenced: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    """What the source holds and what the copy takes of it, read before anything is made."""

    database: str
    role: str  # who reads the source, and whom the forecast's sessions on the copy log in as
    major: int
    bootstrap: str  # the source's bootstrap superuser: the copy's initdb user (owner of what it owns)
    source_bytes: int
    estimated_bytes: int
    tables: dict[int, _Table]
    labels: dict[int, str]  # a table's name as the operator reads it: schema-qualified outside the current schema
    named: tuple[int, ...]
    whole: frozenset[int]
    foreign_keys: tuple[_ForeignKey, ...]
    roles: tuple[tuple[str, tuple[str, ...]], ...]  # (name, CREATE ROLE keywords)
    memberships: tuple[tuple[str, str, bool], ...]  # (role, member, with admin option)


def description(tables: Sequence[str], row_limit: int) -> str:
    """How a forecast names this copy: ``logical: conversation_history ≤ 100,000 rows``."""
    return f"logical: {', '.join(tables)} ≤ {row_limit:,} rows" + (" each" if len(tables) > 1 else "")


@contextlib.contextmanager
def copied(source: sa.URL | str | None = None, *, tables: Sequence[str], row_limit: int, root: Path | None = None,
           port: int | None = None, bin_dir: Path | None = None, os_user: str | None = None,
           reporter: Reporter = ignore) -> Iterator[Clone]:
    """Copy ``tables`` of the database at ``source`` (their newest ``row_limit`` rows, and what those reference) with
    its whole schema into a scratch cluster under ``root``; yield it running; remove it after.

    ``port``: the copy's port (default: a free one; it listens on its socket only). ``bin_dir``:
    where PostgreSQL's server programs are (default: Debian's folder for the source's version).
    ``os_user``: who runs the copy's server when this process is root (default ``postgres``).
    """
    url = database.resolve_url(source)
    if url.get_backend_name() != "postgresql":
        raise ForecastUnavailable("a copy with data needs the PostgreSQL primary: the database URL names "
                                  f"{url.get_backend_name()}")
    names = _checked_request(tables, row_limit)
    owner = programs.server_user(os_user)
    declared = set(build_metadata("postgresql").tables)
    with database.psycopg_connection(url, application_name=APPLICATION_NAME) as conn, \
            _said("the logical copy could not read the source's catalog", url):
        plan = _plan(conn, names, row_limit, declared)
    initdb, pg_ctl, pg_dump, pg_restore = (programs.program(name, major=plan.major, bin_dir=bin_dir)
                                           for name in ("initdb", "pg_ctl", "pg_dump", "pg_restore"))
    folder = server.claim_folder(root, KIND, owner=owner, source=url, size=plan.estimated_bytes, headroom=None,
                                 needed_for="the tables copied (an estimate)", port=port, reporter=reporter)
    try:
        started = time.perf_counter()
        named = tuple(plan.labels[oid] for oid in plan.named)
        reporter(LogicalCopyStarted(source=database.display_url(url), folder=str(folder), tables=named,
                                    row_limit=row_limit))
        _initdb(initdb, folder=folder, owner=owner, superuser=plan.bootstrap)
        # Its socket only: its roles have no passwords, and the private socket trusts them all.
        port = server.start(pg_ctl, folder=folder, owner=owner, port=port, settings={"listen_addresses": ""},
                            rules="", what="the logical copy")
        admin = server.local_url(url.drivername, folder=folder, port=port, username=plan.bootstrap,
                                 database=plan.database)
        with _said("the logical copy could not be made", url):
            _create_roles(admin.set(database="template1"), plan)
            rows = _copy(url, admin, plan, row_limit=row_limit, folder=folder, owner=owner, pg_dump=pg_dump,
                         pg_restore=pg_restore)
        local = server.local_url(url.drivername, folder=folder, port=port, username=plan.role, database=plan.database)
        copy = Clone(url=local, local_url=local, port=port, folder=folder, bytes=server.size(folder),
                     seconds=time.perf_counter() - started, os_user=owner.name, source_bytes=plan.source_bytes,
                     description=description(named, row_limit))
        order = [*plan.named, *sorted(set(plan.tables) - set(plan.named), key=plan.labels.__getitem__)]
        reporter(LogicalCopyReady(port=port, bytes=copy.bytes, seconds=copy.seconds,
                                  rows=tuple((plan.labels[oid], rows[oid]) for oid in order if rows[oid])))
        yield copy
    finally:
        server.stop(pg_ctl, folder=folder, owner=owner)
        leftovers.remove(folder)


def _checked_request(tables: Sequence[str], row_limit: int) -> tuple[str, ...]:
    names = (tables,) if isinstance(tables, str) else tuple(tables)
    names = tuple(name.strip() for name in names if name.strip())
    if not names:
        raise LogicalCopyRefused("a logical copy needs the tables to copy rows of: name one or more "
                                 "(e.g. --tables conversation_history)")
    if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit < 1:
        raise LogicalCopyRefused(f"a logical copy's row limit must be a whole number of 1 or more, not {row_limit!r}: "
                                 f"name how many rows of each table to copy (e.g. --rows {DEFAULT_ROW_LIMIT})")
    return names


# --- what the source holds ---------------------------------------------------------------------------

def _plan(conn: psycopg.Connection, names: tuple[str, ...], row_limit: int, declared: Collection[str]) -> _Plan:
    database_name, role, schema, major, bootstrap, size = conn.execute(
        "SELECT current_database(), current_user, current_schema(), "
        "current_setting('server_version_num')::int / 10000, (SELECT rolname FROM pg_roles WHERE oid = 10), "
        "pg_database_size(current_database())").fetchone()
    tables = {row[0]: _Table(row[0], row[1], row[2], row[3], row[4], int(row[5]), float(row[6]), tuple(row[7]),
                             tuple(row[8])) for row in conn.execute(_TABLES)}
    labels = {oid: table.name if table.schema == schema else f"{table.schema}.{table.name}"
              for oid, table in tables.items()}
    named: list[int] = []
    for name in names:
        oid = _table_named(conn, name, database_name)
        if oid not in tables:
            raise LogicalCopyRefused(f"{name} is not a table a logical copy can take rows of (a view, a partition, a "
                                     "temporary or foreign table): name the table itself")
        if not tables[oid].key:
            raise LogicalCopyRefused(f"table {labels[oid]} has no primary key to tell its newest rows by: name "
                                     "tables that have one")
        if oid not in named:
            named.append(oid)
    unreadable = [labels[oid] for oid, table in tables.items() if not table.readable]
    unreadable += [name if nsp == schema else f"{nsp}.{name}" for nsp, name, may in conn.execute(_SEQUENCES)
                   if not may]
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise TablesUnreadable(f"role {role} may not read {shown} (the logical copy reads every table's schema and "
                               f"the rows it copies): run 'GRANT SELECT ON {shown} TO {role}' as their owner, or "
                               "copy as a role that may read them", role=role, relations=tuple(unreadable))
    whole = frozenset(oid for oid, table in tables.items()
                      if oid not in named and not (table.schema == schema and table.name in declared))
    keys = tuple(_ForeignKey(child, tuple(columns), parent, tuple(referenced))
                 for child, columns, parent, referenced in conn.execute(_FOREIGN_KEYS)
                 if child in tables and parent in tables)
    roles = tuple((name, tuple(yes if flag else no for flag, (_, yes, no) in zip(flags, _ROLE_ATTRIBUTES)))
                  for name, *flags in conn.execute(_ROLES))
    created = {name for name, _ in roles}
    memberships = tuple((group, member, admin)
                        for group, predefined, member, admin in conn.execute(_MEMBERSHIPS, (FIRST_ROLE_OID,))
                        if member in created and (predefined or group in created))
    estimate = sum(table.bytes for oid, table in tables.items() if oid in whole)
    estimate += sum(int(tables[oid].bytes * min(1.0, row_limit / tables[oid].estimated_rows))
                    if tables[oid].estimated_rows > 0 else tables[oid].bytes for oid in named)
    return _Plan(database=database_name, role=role, major=int(major), bootstrap=bootstrap, source_bytes=int(size),
                 estimated_bytes=estimate, tables=tables, labels=labels, named=tuple(named), whole=whole,
                 foreign_keys=keys, roles=roles, memberships=memberships)


def _table_named(conn: psycopg.Connection, name: str, database_name: str) -> int | None:
    """The oid of the relation ``name`` names (as the role's search_path resolves it); refused when there is none."""
    try:
        oid = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()[0]
    except (psycopg.errors.SyntaxError, psycopg.errors.InvalidName, psycopg.errors.FeatureNotSupported):
        oid = None  # not a table's name at all: "a.b.c.d", '"unclosed', "otherdb.public.t"
    if oid is None:
        raise LogicalCopyRefused(f"there is no table {name} in the database {database_name}: name tables it has "
                                 "(psql's \\dt lists them), e.g. --tables conversation_history")
    return int(oid)


# --- the copy's cluster, roles and schema -----------------------------------------------------------

def _initdb(initdb: Path, *, folder: Path, owner: OsUser, superuser: str) -> None:
    # Its own databases in C and UTF-8; the copied one gets the source's encoding and locale (pg_restore --create).
    done = programs.run([initdb, "--pgdata", folder / "data", f"--username={superuser}", "--auth-local=trust",
                         "--auth-host=reject", "--encoding=UTF8", "--no-locale", "--no-sync"],
                        user=owner, env=server.server_env(), cwd=folder)
    if done.returncode != 0:
        said = next((line for line in done.stderr.splitlines() if "error" in line.lower()), done.stderr.strip())
        raise ForecastUnavailable(f"initdb could not make the logical copy's cluster: {said or done.returncode}")


def _create_roles(url: sa.URL, plan: _Plan) -> None:
    with database.psycopg_connection(url) as conn:
        for name, attributes in plan.roles:
            conn.execute(sql.SQL("CREATE ROLE {} WITH {}").format(
                sql.Identifier(name), sql.SQL(" ").join(map(sql.SQL, attributes))))
        for group, member, admin in plan.memberships:
            conn.execute(sql.SQL("GRANT {} TO {}{}").format(sql.Identifier(group), sql.Identifier(member),
                                                            sql.SQL(" WITH ADMIN OPTION" if admin else "")))
        # A source database called postgres: pg_restore --create makes it anew, as the source has it.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(plan.database)))


def _copy(source: sa.URL, copy: sa.URL, plan: _Plan, *, row_limit: int, folder: Path, owner: OsUser, pg_dump: Path,
          pg_restore: Path) -> dict[int, int]:
    """The schema and the rows, from one snapshot of the source; return the rows copied per table."""
    dump = folder / DUMP_FILE
    with database.psycopg_connection(source, autocommit=False, application_name=APPLICATION_NAME) as reading:
        reading.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reading.read_only = True
        with reading.transaction():
            # pg_dump reads in this transaction's snapshot while it waits, idle: no timeout may end it.
            reading.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            snapshot = reading.execute("SELECT pg_export_snapshot()").fetchone()[0]
            _run(pg_dump, "--schema-only", "--format=custom", f"--file={dump}", f"--snapshot={snapshot}",
                 "--no-subscriptions", "--no-security-labels", url=source, folder=folder, owner=owner,
                 doing="pg_dump could not read the source's schema")
            _restore(pg_restore, copy.set(database="template1"), "--create", "--section=pre-data", dump=dump,
                     folder=folder, owner=owner)
            with database.psycopg_connection(copy, autocommit=False) as writing, writing.transaction():
                rows = _copy_rows(reading, writing, plan, row_limit)
                _set_sequences(reading, writing)
    _restore(pg_restore, copy, "--section=post-data", "--single-transaction", dump=dump, folder=folder, owner=owner)
    with database.psycopg_connection(copy) as conn:
        conn.execute("VACUUM (ANALYZE)")
    dump.unlink()
    return rows


@contextlib.contextmanager
def _said(doing: str, source: sa.URL) -> Iterator[None]:
    """A database's error while ``doing`` as one line of the forecast's own (never the source's password)."""
    try:
        yield
    except psycopg.Error as exc:
        raise ForecastUnavailable(f"{doing}: {database.redact(first_line(exc), source.password)}") from exc


def _run(program: Path, *args: str | Path, url: sa.URL, folder: Path, owner: OsUser, doing: str) -> None:
    """Run one of PostgreSQL's client programs connected to ``url`` (through its environment) as ``owner``."""
    env = programs.connection_environment(url, passfile_folder=folder, owner=owner)
    done = programs.run([program, "--no-password", *args], user=owner, env=env, cwd=folder)
    if done.returncode != 0:
        raise ForecastUnavailable(f"{doing}: {tool_error(done, url)}")


def _restore(pg_restore: Path, url: sa.URL, *args: str, dump: Path, folder: Path, owner: OsUser) -> None:
    # --dbname names the database as a connection string: a plain name holding "=" would be read as one.
    _run(pg_restore, *args, "--exit-on-error", "--no-tablespaces",
         f"--dbname={psycopg.conninfo.make_conninfo(dbname=url.database)}", dump, url=url, folder=folder,
         owner=owner, doing="pg_restore could not restore the source's schema into the logical copy")


# --- the rows ---------------------------------------------------------------------------------------

def _copy_rows(reading: psycopg.Connection, writing: psycopg.Connection, plan: _Plan,
               row_limit: int) -> dict[int, int]:
    """Whole tables, the named tables' newest rows, then every row those reference until nothing is missing."""
    rows = dict.fromkeys(plan.tables, 0)
    for oid in plan.whole:
        rows[oid] += _stream(reading, writing, plan.tables[oid], plan.tables[oid].select())
    for oid in plan.named:
        table = plan.tables[oid]
        newest = sql.SQL("{} ORDER BY {} LIMIT {}").format(
            table.select(), sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(key)) for key in table.key),
            sql.Literal(row_limit))
        rows[oid] += _stream(reading, writing, table, newest)
    added = True
    while added:  # a reference followed can bring rows that reference more (a chain, a table referencing itself)
        added = False
        for key in plan.foreign_keys:
            if key.parent in plan.whole or not rows[key.child]:
                continue
            parent = plan.tables[key.parent]
            missing = _missing(writing, plan.tables[key.child], key, parent)
            for start in range(0, len(missing), KEYS_PER_STATEMENT):
                chunk = tuple(missing[start:start + KEYS_PER_STATEMENT])
                found = _stream(reading, writing, parent, sql.SQL("{} WHERE {}").format(
                    parent.select(), _matching(key.referenced, chunk)))
                rows[key.parent] += found
                added = added or found > 0
    return rows


def _missing(writing: psycopg.Connection, child: _Table, key: _ForeignKey, parent: _Table) -> list[tuple]:
    """The values the copy's ``child`` rows reference in ``parent`` that the copy does not hold yet."""
    present = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(column))
                                    for column in key.columns)  # a NULL in a key references nothing
    query = sql.SQL("{} WHERE {} EXCEPT {}").format(child.select(*key.columns), present,
                                                     parent.select(*key.referenced))
    return writing.execute(query).fetchall()


def _matching(columns: tuple[str, ...], keys: tuple[tuple, ...]) -> sql.Composed:
    """``columns`` equal to one of ``keys``: literals, typed by psycopg (COPY takes no parameters)."""
    if len(columns) == 1:  # an untyped literal array takes the column's type: text keys match an enum too
        return sql.SQL("{} = ANY({})").format(sql.Identifier(columns[0]), sql.Literal([key[0] for key in keys]))
    return sql.SQL("({}) IN (VALUES {})").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, key))) for key in keys))


def _stream(reading: psycopg.Connection, writing: psycopg.Connection, table: _Table, query: sql.Composable) -> int:
    """Stream ``query``'s rows from the source into ``table`` on the copy, block by block; return how many."""
    into = sql.SQL("COPY {} ({}) FROM STDIN").format(table.identifier,
                                                     sql.SQL(", ").join(map(sql.Identifier, table.columns)))
    with reading.cursor() as source, writing.cursor() as target:
        with source.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as out, target.copy(into) as copy_in:
            for block in out:
                copy_in.write(block)
        return max(target.rowcount, 0)


def _set_sequences(reading: psycopg.Connection, writing: psycopg.Connection) -> None:
    """Each sequence of the copy where the source's is, past every id copied (read after the rows)."""
    values = reading.execute(
        f"SELECT n.nspname, c.relname, pg_sequence_last_value(c.oid) FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND {_USER_RELATION}").fetchall()
    for schema, name, value in values:
        if value is not None:  # None: never used, as the schema restored it
            writing.execute("SELECT setval(c.oid, %s) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'S'", (value, schema, name))
