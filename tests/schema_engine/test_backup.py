"""``schema_engine.backup``: backups that leak nothing, and a restore that takes only a backup of this schema."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import backup, commands, database, errors, scratch, state
from tests.conftest import REVISIONS, call, run_sql

SECRET = "s3cret-pw@with-an-at"


@pytest.fixture
def watched_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PostgreSQL's client tools, each behind a wrapper that records the command line it was given, then runs it.

    What ``ps`` would show any user of the host while the real tool runs.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    for tool in ("pg_dump", "pg_restore", "psql"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexec "{real}" "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def with_password(url: sa.URL) -> sa.URL:
    return url.set(password=SECRET)  # the local server trusts every local user: any password is let in


@pytest.fixture
def pg_with_calls(make_database) -> sa.URL:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=5, seed=1)
    return url


def test_the_password_reaches_the_tools_only_through_the_environment(pg_with_calls: sa.URL, tmp_path: Path,
                                                                      watched_tools: Path) -> None:
    url = with_password(pg_with_calls)
    saved = backup.back_up(tmp_path / "backups", label="test", url=url)
    assert SECRET not in saved.restore_command and "s3cret" not in saved.restore_command
    backup.restore(saved.path, url=url)
    command_lines = watched_tools.read_text()
    assert "pg_dump" in command_lines and "psql" in command_lines
    assert "s3cret" not in command_lines


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_backups_are_private(make_database, tmp_path: Path, backend: str) -> None:
    url = make_database(backend)
    commands.upgrade(revision="head", url=url)
    saved = backup.back_up(tmp_path / "new" / "backups", label="test", url=url)
    assert stat.S_IMODE(saved.path.stat().st_mode) == 0o600
    assert [stat.S_IMODE(folder.stat().st_mode) for folder in (saved.path.parent, saved.path.parent.parent)] == [
        0o700, 0o700]  # each folder the backup made


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_backup_restores_the_database_whole(make_database, tmp_path: Path, backend: str) -> None:
    url = make_database(backend)
    commands.upgrade(revision="003_context_management", url=url)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=5, seed=1)
    saved = backup.back_up_before_migrating(tmp_path, url=url)
    assert "-at-003_context_management-" in saved.path.name
    commands.upgrade(revision="head", url=url)
    run_sql(url, "DELETE FROM calls")
    assert backup.restore(saved.path, url=url) == ("003_context_management",)
    assert state.status(url=url).current == ("003_context_management",)
    assert run_sql(url, "SELECT count(*) FROM calls")[0][0] == 5


def _sqlite_file_with(path: Path, *statements: str) -> Path:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("make_file", [
    pytest.param(lambda d: _sqlite_file_with(d / "other.sqlite3", "CREATE TABLE notes (body TEXT)"),
                 id="another-sqlite-database"),
    pytest.param(lambda d: _sqlite_file_with(d / "alien.sqlite3", "CREATE TABLE alembic_version (version_num TEXT)",
                                             "INSERT INTO alembic_version VALUES ('f00ba4')"), id="another-schema"),
    pytest.param(lambda d: _sqlite_file_with(d / "empty.sqlite3", "CREATE TABLE alembic_version (version_num TEXT)"),
                 id="no-revision"),
    pytest.param(lambda d: Path("/etc/passwd"), id="not-a-database"),
    pytest.param(lambda d: d, id="a-directory"),
])
def test_restore_refuses_what_is_not_a_backup_of_this_schema(make_database, tmp_path: Path, make_file) -> None:
    url = make_database("sqlite")
    commands.upgrade(revision="head", url=url)
    run_sql(url, "INSERT INTO calls (phone_number) VALUES ('+15555550001')")
    with pytest.raises(backup.BackupFailed, match="nothing was restored|no backup file"):
        backup.restore(make_file(tmp_path), url=url)
    assert state.status(url=url).current == (REVISIONS[-1],)
    assert run_sql(url, "SELECT count(*) FROM calls")[0][0] == 1


def test_restore_refuses_a_dump_of_another_schema_on_postgresql(pg_with_calls: sa.URL, tmp_path: Path) -> None:
    alien = tmp_path / "alien.sql"
    alien.write_text("CREATE TABLE notes (body text);\nINSERT INTO notes VALUES ('x');\n")
    with pytest.raises(backup.NotABackup, match="records no Alembic revision"):
        backup.restore(alien, url=pg_with_calls)
    assert run_sql(pg_with_calls, "SELECT count(*) FROM calls")[0][0] == 5


def _plain_dump(url: sa.URL, path: Path) -> Path:
    """The guide's backup step: ``pg_dump ... > backup.sql``."""
    target, env = database.libpq_connection(url)
    with path.open("w") as out:
        subprocess.run(["pg_dump", "--dbname", target], env=env, stdout=out, check=True)
    return path


def test_the_guides_plain_sql_backup_restores_into_a_cleaned_database(pg_with_calls: sa.URL, tmp_path: Path) -> None:
    dump = _plain_dump(pg_with_calls, tmp_path / "backup_20250106_140000.sql")
    commands.downgrade(revision="003_context_management", url=pg_with_calls)
    run_sql(pg_with_calls, "DELETE FROM contacts")
    assert backup.restore(dump, url=pg_with_calls) == (REVISIONS[-1],)
    assert state.status(url=pg_with_calls).current == (REVISIONS[-1],)
    assert run_sql(pg_with_calls, "SELECT count(*) FROM calls")[0][0] == 5
    assert run_sql(pg_with_calls, "SELECT count(*) FROM alembic_version")[0][0] == 1


def test_the_guides_psql_restore_into_a_live_database_is_recoverable(pg_with_calls: sa.URL, tmp_path: Path) -> None:
    """``psql reautomation < backup.sql`` on a live database fails row by row and leaves two revisions recorded."""
    dump = _plain_dump(pg_with_calls, tmp_path / "backup.sql")
    commands.downgrade(revision="004_performance_indexes", url=pg_with_calls)
    target, env = database.libpq_connection(pg_with_calls)
    subprocess.run(["psql", "--quiet", "--dbname", target, "--file", str(dump)], env=env, capture_output=True)
    recorded = {row[0] for row in run_sql(pg_with_calls, "SELECT version_num FROM alembic_version")}
    assert recorded == {"004_performance_indexes", REVISIONS[-1]}
    with pytest.raises(errors.SeveralRecordedRevisions, match="stamp REV --purge"):
        state.status(url=pg_with_calls)

    assert backup.restore(dump, url=pg_with_calls) == (REVISIONS[-1],)
    assert state.status(url=pg_with_calls).current == (REVISIONS[-1],)
    commands.check(url=pg_with_calls)


def test_a_failed_restore_leaves_the_database_as_it_was(pg_with_calls: sa.URL, tmp_path: Path) -> None:
    broken = tmp_path / "broken.sql"
    broken.write_text("CREATE TABLE alembic_version (version_num varchar(32));\n"
                      f"INSERT INTO alembic_version VALUES ('{REVISIONS[-1]}');\nTHIS IS NOT SQL;\n")
    with pytest.raises(backup.BackupFailed, match="rolled back, the database is unchanged: .*ERROR: +syntax error"):
        backup.restore(broken, url=pg_with_calls)  # the error, not the NOTICEs of the cleaning before it
    assert run_sql(pg_with_calls, "SELECT count(*) FROM calls")[0][0] == 5


def test_a_backup_pg_restore_cannot_read_whole_restores_nothing(pg_with_calls: sa.URL, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_restore stopping halfway (a truncated file, a read error) leaves the database as it was, not half a backup."""
    saved = backup.back_up(tmp_path, label="test", url=pg_with_calls)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(["bash", "-c", "command -v pg_restore"], capture_output=True, text=True).stdout.strip()
    # the SQL up to one table's rows, then the error a truncated file gives
    (bin_dir / "pg_restore").write_text(
        f'#!/bin/sh\ncase "$*" in *--no-owner*) ;; *) exec "{real}" "$@";; esac\n'
        f'"{real}" "$@" | sed "/^COPY public.conversation_history /q"\n'
        'echo "pg_restore: error: could not read from input file: end of file" >&2\nexit 1\n')
    (bin_dir / "pg_restore").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run_sql(pg_with_calls, "CREATE TABLE made_since (id int)")
    messages = run_sql(pg_with_calls, "SELECT count(*) FROM conversation_history")[0][0]

    with pytest.raises(backup.BackupFailed, match="rolled back.*cannot read the backup whole: .*end of file"):
        backup.restore(saved.path, url=pg_with_calls)
    assert run_sql(pg_with_calls, "SELECT count(*) FROM conversation_history")[0][0] == messages > 0
    assert run_sql(pg_with_calls, "SELECT to_regclass('made_since') IS NOT NULL")[0][0]


def test_restore_through_the_command_is_one_line_for_a_bad_file(make_database, tmp_path: Path) -> None:
    url = make_database("sqlite")
    commands.upgrade(revision="head", url=url)
    result = call(url, "migrate_schema", "restore", "/etc/passwd", "--yes")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "CommandError: /etc/passwd is not a SQLite backup of this schema; nothing was restored"]


@dataclass(frozen=True)
class GrantedDatabase:
    """A database at head whose tables an application role and a read-only role use, as an operator grants them."""

    migrator: sa.URL  # the role that migrates, backs up and restores
    app: sa.URL
    readonly: sa.URL


def _schema_access(url: sa.URL) -> list[sa.Row]:
    """The schema's owner and grants and every default privilege: what a restore must leave as it was."""
    return run_sql(url, "SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE nspname = 'public' "
                        "UNION ALL SELECT defaclrole::regrole::text || ' ' || defaclnamespace::regnamespace::text, "
                        "defaclobjtype::text || ' ' || defaclacl::text FROM pg_default_acl ORDER BY 1, 2")


@pytest.fixture(params=["superuser", "database-owner", "granted-create"])
def granted_db(request: pytest.FixtureRequest, postgres_admin: sa.Engine) -> Iterator[GrantedDatabase]:
    """The database and its roles, made as a managed service and an operator would; dropped with the roles after.

    ``superuser``: the migration role is the server's superuser. ``database-owner``: a plain role that owns
    the database (a managed service's). ``granted-create``: a plain role that owns the tables but neither
    the database nor ``public`` (granted CREATE on it).
    """
    suffix = uuid.uuid4().hex[:10]
    app, readonly = f"test_app_{suffix}", f"test_ro_{suffix}"
    migrator = postgres_admin.url.username if request.param == "superuser" else f"test_mig_{suffix}"
    roles = [app, readonly] + ([] if request.param == "superuser" else [migrator])
    quote = postgres_admin.dialect.identifier_preparer.quote
    with postgres_admin.connect() as conn:
        for role in roles:
            conn.execute(sa.text(f"CREATE ROLE {quote(role)} LOGIN"))
    admin_url = scratch.create_database(postgres_admin, scratch.unique_name("test_reautomation"))
    try:
        if request.param == "database-owner":
            run_sql(admin_url, f"ALTER DATABASE {quote(admin_url.database)} OWNER TO {quote(migrator)}")
        elif request.param == "granted-create":
            run_sql(admin_url, f"GRANT CREATE ON SCHEMA public TO {quote(migrator)}")
        migrator_url = admin_url.set(username=migrator)
        commands.upgrade(revision="head", url=migrator_url)
        with database.connect(migrator_url) as conn:
            generate_sample_data(connection=conn, calls=5, seed=1)
        # The operator's grants: today's tables, and the ones the migration role creates later. The
        # schema's USAGE comes from PostgreSQL's default grant to PUBLIC, as on a new database.
        m, a, r = quote(migrator), quote(app), quote(readonly)
        for statement in (f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {a}",
                          f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {a}",
                          f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}",
                          f"ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA public "
                          f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {a}",
                          f"ALTER DEFAULT PRIVILEGES FOR ROLE {m} GRANT USAGE ON SEQUENCES TO {a}",
                          f"ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA public GRANT SELECT ON TABLES TO {r}",
                          # the operator's own defaults: a plain migration role may not set these
                          f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r}"):
            run_sql(admin_url, statement)
        yield GrantedDatabase(migrator=migrator_url, app=admin_url.set(username=app),
                              readonly=admin_url.set(username=readonly))
    finally:
        scratch.drop_database(postgres_admin, admin_url)
        with postgres_admin.connect() as conn:
            for role in roles:
                conn.execute(sa.text(f"DROP ROLE IF EXISTS {quote(role)}"))


def _uses_as_before(db: GrantedDatabase, phone: str) -> None:
    """The application reads and writes, the read-only role reads and cannot write."""
    run_sql(db.app, "INSERT INTO calls (phone_number) VALUES (:phone)", {"phone": phone})
    run_sql(db.app, "UPDATE calls SET status = 'completed' WHERE phone_number = :phone", {"phone": phone})
    assert run_sql(db.readonly, "SELECT count(*) FROM calls WHERE phone_number = :phone", {"phone": phone})[0][0] == 1
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        run_sql(db.readonly, "DELETE FROM calls")


def test_a_restore_gives_every_role_its_access_back(granted_db: GrantedDatabase, tmp_path: Path) -> None:
    """The schema's grants, the tables' grants and the default privileges are as they were before the restore."""
    db = granted_db
    _uses_as_before(db, "+15555550002")
    access = _schema_access(db.migrator)
    saved = backup.back_up(tmp_path, label="test", url=db.migrator)
    run_sql(db.migrator, "DELETE FROM call_notes")
    run_sql(db.migrator, "CREATE TABLE made_since (id int)")

    assert backup.restore(saved.path, url=db.migrator) == (REVISIONS[-1],)
    _uses_as_before(db, "+15555550003")
    assert _schema_access(db.migrator) == access
    assert run_sql(db.migrator, "SELECT to_regclass('made_since') IS NULL")[0][0]
    # the default privileges still reach what the migration role creates next
    run_sql(db.migrator, "CREATE TABLE made_after (id int)")
    run_sql(db.app, "INSERT INTO made_after VALUES (1)")
    assert run_sql(db.readonly, "SELECT count(*) FROM made_after")[0][0] == 1


@pytest.mark.parametrize("granted_db", ["superuser"], indirect=True)  # the guide's restore runs as the superuser
def test_the_guides_plain_sql_backup_keeps_every_roles_access(granted_db: GrantedDatabase, tmp_path: Path) -> None:
    db = granted_db
    access = _schema_access(db.migrator)
    dump = _plain_dump(db.migrator, tmp_path / "backup.sql")
    backup.restore(dump, url=db.migrator)
    assert _schema_access(db.migrator) == access
    _uses_as_before(db, "+15555550003")
