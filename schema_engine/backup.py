"""A backup of the database before a migration (``migrate_schema upgrade --backup DIR``), and putting one back.

PostgreSQL: ``pg_dump --format=custom``; SQLite: SQLite's online backup into a file. Backups hold
contacts, conversations and password hashes: they are created 0600, in a folder created 0700.
PostgreSQL's tools get the password through the environment (``PGPASSWORD``), never the command
line, and the restore command printed for the operator carries none.

``restore`` takes only a backup of this schema: a file whose ``alembic_version`` records revisions
this code knows. It replaces everything in the schema ``public`` in one transaction, so a failed
restore leaves the database as it was; the schema itself stays, with its owner, its grants and the
default privileges, and the backup's grants come back with its tables, so every other role keeps
its access. It also takes a plain ``pg_dump`` SQL file, as the guide's backup step makes one.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from operator_kit.files import private_folder
from schema_engine import database
from schema_engine.errors import BackupFailed, NotABackup
from schema_engine.state import known_revisions, status

PRIVATE_FILES = 0o077  # umask: files 0600, folders 0700
SQLITE_MAGIC = b"SQLite format 3\x00"
CUSTOM_DUMP_MAGIC = b"PGDMP"
# What a restore runs first, in the same transaction as the backup's own SQL: the backup alone
# says what the schema holds afterwards (tables added since, archives, leftovers: all gone). It
# empties ``public`` rather than dropping it: a new schema would have a new owner and none of the
# grants other roles reach the tables through (PUBLIC's USAGE included), dropping it would take
# the default privileges set in it, and a migration role that owns the tables but not the schema
# (a managed service's) may not drop it. Extensions' objects stay: the dump re-creates an
# extension only IF NOT EXISTS. Relations go first (CASCADE takes their indexes, constraints,
# triggers, owned sequences and dependent views), sequences last (an identity column's goes with
# its table and cannot be dropped alone); each is looked up again as an earlier CASCADE may have
# taken it.
CLEAN_SCHEMA = r"""
DO $clean$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT c.oid, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'public'::pg_catalog.regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY c.relkind = 'S', c.oid
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = item.oid) THEN
            EXECUTE pg_catalog.format('DROP %s %s CASCADE', item.kind, item.oid::pg_catalog.regclass);
        END IF;
    END LOOP;
    FOR item IN
        SELECT p.oid, CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END AS kind
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'public'::pg_catalog.regnamespace
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_proc WHERE oid = item.oid) THEN
            EXECUTE pg_catalog.format('DROP %s %s CASCADE', item.kind, item.oid::pg_catalog.regprocedure);
        END IF;
    END LOOP;
    FOR item IN
        SELECT t.oid, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END AS kind
        FROM pg_catalog.pg_type t
        WHERE t.typnamespace = 'public'::pg_catalog.regnamespace
          AND (t.typtype IN ('e', 'r', 'd')
               OR t.typtype = 'c' AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                          AND d.objid = t.oid AND d.deptype = 'e')
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_type WHERE oid = item.oid) THEN
            EXECUTE pg_catalog.format('DROP %s %s CASCADE', item.kind, item.oid::pg_catalog.regtype);
        END IF;
    END LOOP;
END
$clean$;
"""  # noqa: E501 (SQL keeps its exact text)
# A default-privileges entry in ``pg_restore --list``: the last field is the role it is for.
_DEFAULT_ACL_ENTRY = re.compile(r"^\d+; \d+ \d+ DEFAULT ACL \S+ DEFAULT PRIVILEGES FOR \S+ (?P<role>.+)$")
_ERROR_LINE = re.compile(r"\b(?:ERROR|FATAL|PANIC|error):")
# alembic_version's rows in a dump: COPY (pg_dump's default) or INSERT (pg_dump --inserts).
_COPY_VERSIONS = re.compile(r"^COPY (?:public\.)?alembic_version \(version_num\) FROM stdin;\n(?P<rows>.*?)^\\\.$",
                            re.M | re.S)
_INSERT_VERSION = re.compile(r"^INSERT INTO (?:public\.)?alembic_version (?:\(version_num\) )?"
                             r"VALUES \('(?P<rev>[^']*)'\);", re.M)


@dataclass(frozen=True)
class Backup:
    path: Path
    restore_command: str


def back_up(directory: Path, *, label: str, url: sa.URL | str | None = None) -> Backup:
    """Write a backup of the database into ``directory``, named for the database, ``label`` and the time."""
    url = database.resolve_url(url)
    try:
        private_folder(directory)  # each missing folder made 0700, not only the last
    except OSError as exc:
        raise BackupFailed(f"cannot create the backup directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise BackupFailed(f"the backup directory {directory} is not writable")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = Path(url.database or "database").stem
    if url.get_backend_name() == "sqlite":
        return _back_up_sqlite(url, directory / f"{name}-{label}-{stamp}.sqlite3")
    return _back_up_postgresql(url, directory / f"{name}-{label}-{stamp}.dump")


def back_up_before_migrating(directory: Path, *, url: sa.URL | str | None = None) -> Backup:
    """Back up the database into ``directory``, the file named for the revision it is at."""
    where = "-".join(status(url=url).current) or "base"
    return back_up(directory, label=f"at-{where}", url=url)


def client_tool(name: str) -> str:
    """Return the path of one of PostgreSQL's client tools; raise ``BackupFailed`` if it is not installed."""
    found = shutil.which(name)
    if found is None:
        raise BackupFailed(f"{name} is not installed: install PostgreSQL's client tools (Debian: postgresql-client)")
    return found


def tool_error(result: subprocess.CompletedProcess[str], url: sa.URL) -> str:
    """Return the first error line of a client tool's complaint (else its first line), passwords masked."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.search(line)]  # not the NOTICEs and WARNINGs before it
    return database.redact((errors or lines or [f"exit status {result.returncode}"])[0], url.password)


def _back_up_postgresql(url: sa.URL, path: Path) -> Backup:
    pg_dump = client_tool("pg_dump")
    target, env = database.libpq_connection(url)
    result = subprocess.run([pg_dump, "--format=custom", "--file", str(path), "--dbname", target], env=env,
                            capture_output=True, text=True, umask=PRIVATE_FILES)
    if result.returncode != 0:
        path.unlink(missing_ok=True)
        raise BackupFailed(f"pg_dump failed, nothing was migrated: {tool_error(result, url)}")
    return Backup(path=path, restore_command=f"manage.py migrate_schema restore {shlex.quote(str(path))} --yes")


def _private_file(path: Path) -> None:
    """Create ``path`` empty and readable by its owner only (it must not exist)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _back_up_sqlite(url: sa.URL, path: Path) -> Backup:
    source_path = url.database
    if not source_path or source_path == ":memory:":
        raise BackupFailed("an in-memory SQLite database cannot be backed up")
    try:
        _private_file(path)
        source = sqlite3.connect(source_path)
        try:
            target = sqlite3.connect(path)
            with target:
                source.backup(target)
            target.close()
        finally:
            source.close()
    except (OSError, sqlite3.Error) as exc:
        path.unlink(missing_ok=True)
        raise BackupFailed(f"the SQLite backup failed, nothing was migrated: {exc}") from exc
    return Backup(path=path, restore_command=f"manage.py migrate_schema restore {shlex.quote(str(path))} --yes")


def restore(path: Path, *, url: sa.URL | str | None = None) -> tuple[str, ...]:
    """Replace the database with the backup at ``path``; return the revisions it records.

    Accepts what ``back_up`` writes and a plain ``pg_dump`` SQL file. Anything that is not a
    backup of this schema raises ``NotABackup`` and the database is not touched.
    """
    url = database.resolve_url(url)
    if not path.is_file():
        raise BackupFailed(f"no backup file at {path}")
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError as exc:
        raise BackupFailed(f"cannot read the backup {path}: {exc.strerror}") from exc
    if url.get_backend_name() == "sqlite":
        if not head.startswith(SQLITE_MAGIC):
            raise NotABackup(f"{path} is not a SQLite backup of this schema; nothing was restored")
        revisions = _checked(path, _sqlite_revisions(path))
        _restore_sqlite(path, url)
        return revisions
    if head.startswith(SQLITE_MAGIC):
        raise NotABackup(f"{path} is a SQLite backup and the database is PostgreSQL; nothing was restored")
    custom = head.startswith(CUSTOM_DUMP_MAGIC)
    revisions = _checked(path, _custom_dump_revisions(path, url) if custom else _plain_dump_revisions(path))
    _restore_postgresql(path, url, custom=custom)
    return revisions


def _checked(path: Path, revisions: tuple[str, ...]) -> tuple[str, ...]:
    if not revisions:
        raise NotABackup(f"{path} is not a backup of this schema: it records no Alembic revision "
                         "(no alembic_version row); nothing was restored")
    unknown = [rev for rev in revisions if rev not in known_revisions()]
    if unknown:
        raise NotABackup(f"{path} records revision {', '.join(unknown)}, which this code does not know "
                         "(a backup of another schema, or of newer code); nothing was restored")
    return revisions


def _sqlite_revisions(path: Path) -> tuple[str, ...]:
    try:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return tuple(row[0] for row in source.execute("SELECT version_num FROM alembic_version"))
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise NotABackup(f"{path} is not a backup of this schema ({exc}); nothing was restored") from exc


def _dump_versions(sql: str) -> tuple[str, ...]:
    copied = _COPY_VERSIONS.search(sql)
    rows = copied.group("rows").split() if copied else []
    return tuple(rows) + tuple(match.group("rev") for match in _INSERT_VERSION.finditer(sql))


def _plain_dump_revisions(path: Path) -> tuple[str, ...]:
    try:
        sql = path.read_text(errors="replace")
    except OSError as exc:
        raise BackupFailed(f"cannot read the backup {path}: {exc.strerror}") from exc
    return _dump_versions(sql)


def _custom_dump_revisions(path: Path, url: sa.URL) -> tuple[str, ...]:
    result = subprocess.run([client_tool("pg_restore"), "--data-only", "--table", "alembic_version", "--file", "-",
                             str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise NotABackup(f"{path} cannot be read by pg_restore ({tool_error(result, url)}); nothing was restored")
    return _dump_versions(result.stdout)


def _restore_sqlite(path: Path, url: sa.URL) -> None:
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    target = sqlite3.connect(url.database)
    try:
        with target:
            source.backup(target)
    except sqlite3.Error as exc:
        raise BackupFailed(f"the SQLite restore failed: {exc}") from exc
    finally:
        source.close()
        target.close()


def _restore_postgresql(path: Path, url: sa.URL, *, custom: bool) -> None:
    """Clean the schema and load the backup with ``psql``, all in one transaction."""
    target, env = database.libpq_connection(url)
    psql = [client_tool("psql"), "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", target]
    if not custom:
        result = subprocess.run([*psql, "--single-transaction", "--command", CLEAN_SCHEMA, "--file", str(path)],
                                env=env, capture_output=True, text=True)
    else:
        with tempfile.TemporaryDirectory() as folder:
            pg_restore = [client_tool("pg_restore"), "--no-owner", "--file", "-"]
            listing = _restore_list(path, url)
            if listing is not None:
                list_file = Path(folder) / "restore.list"
                list_file.write_text(listing)
                pg_restore += ["--use-list", str(list_file)]
            result = _load_whole([*psql, "--command", "BEGIN", "--command", CLEAN_SCHEMA, "--file", "-"],
                                 [*pg_restore, str(path)], env=env, folder=Path(folder), url=url)
    if result.returncode != 0:
        raise BackupFailed(f"the restore failed and was rolled back, the database is unchanged: "
                           f"{tool_error(result, url)}")


def _load_whole(psql: list[str], pg_restore: list[str], *, env: dict[str, str], folder: Path,
                url: sa.URL) -> subprocess.CompletedProcess[str]:
    """Pipe ``pg_restore``'s SQL into ``psql`` (in a transaction it began), committing only a backup read whole.

    ``psql --single-transaction`` commits at the end of its input: a backup ``pg_restore`` stops
    reading halfway (a truncated file) would leave the half it read. Here COMMIT follows only once
    ``pg_restore`` has exited cleanly; otherwise psql's input ends inside the transaction and
    PostgreSQL rolls it back. Their complaints go to files, so that neither blocks on a full pipe.
    """
    with (folder / "psql.err").open("w+") as psql_err, (folder / "pg_restore.err").open("w+") as dump_err:
        dump = subprocess.Popen(pg_restore, stdout=subprocess.PIPE, stderr=dump_err)
        load = subprocess.Popen(psql, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_err, env=env,
                                bufsize=0)
        assert dump.stdout is not None and load.stdin is not None
        try:
            shutil.copyfileobj(dump.stdout, load.stdin)
            if dump.wait() == 0:
                load.stdin.write(b"COMMIT;\n")
        except BrokenPipeError:
            pass  # psql stopped at an error (ON_ERROR_STOP): its own complaint says which
        finally:
            load.stdin.close()
            dump.stdout.close()  # a pg_restore still writing stops (SIGPIPE)
            load.wait()
            dump.wait()
        psql_err.seek(0)
        dump_err.seek(0)
        if load.returncode == 0 and dump.returncode != 0:
            complaint = tool_error(subprocess.CompletedProcess(pg_restore, dump.returncode, "", dump_err.read()), url)
            return subprocess.CompletedProcess(pg_restore, dump.returncode, "",
                                               f"pg_restore cannot read the backup whole: {complaint}")
        return subprocess.CompletedProcess(psql, load.returncode, "", psql_err.read())


def _restore_list(path: Path, url: sa.URL) -> str | None:
    """Return the dump's contents less the default privileges the restoring role may not set; None if it may set all.

    PostgreSQL lets only a role and its members set that role's default privileges (a superuser
    sets any): a plain migration role restoring the operator's would fail the whole restore. The
    database keeps the ones it has, as the restore leaves default privileges in place.
    """
    listing = subprocess.run([client_tool("pg_restore"), "--list", str(path)], capture_output=True, text=True)
    if listing.returncode != 0:
        raise NotABackup(f"{path} cannot be read by pg_restore ({tool_error(listing, url)}); nothing was restored")
    entries = {line: match.group("role") for line in listing.stdout.splitlines()
               if (match := _DEFAULT_ACL_ENTRY.match(line))}
    if not entries:
        return None
    with database.connect(url) as conn:
        allowed = set(conn.execute(sa.text(
            "SELECT rolname FROM pg_catalog.pg_roles "
            "WHERE rolname = ANY(:roles) AND pg_catalog.pg_has_role(rolname, 'MEMBER')"),
            {"roles": sorted(set(entries.values()))}).scalars())
    skipped = {line for line, role in entries.items() if role not in allowed}
    if not skipped:
        return None
    return "".join(f";{line}\n" if line in skipped else f"{line}\n" for line in listing.stdout.splitlines())
