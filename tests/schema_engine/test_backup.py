"""``reautomation.backup``: backups that leak nothing, and a restore that takes only a backup of this schema."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import backup, commands, database, errors, state
from tests.conftest import REVISIONS, manage, run_sql

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
    assert stat.S_IMODE(saved.path.parent.stat().st_mode) == 0o700


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
    with pytest.raises(backup.BackupFailed, match="rolled back, the database is unchanged"):
        backup.restore(broken, url=pg_with_calls)
    assert run_sql(pg_with_calls, "SELECT count(*) FROM calls")[0][0] == 5


def test_restore_through_the_command_is_one_line_for_a_bad_file(make_database, tmp_path: Path) -> None:
    url = make_database("sqlite")
    commands.upgrade(revision="head", url=url)
    result = manage(url, "migrate_schema", "restore", "/etc/passwd", "--yes")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "CommandError: /etc/passwd is not a SQLite backup of this schema; nothing was restored"]
