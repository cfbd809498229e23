"""``schema_engine/forecast/logical.py``: a logical copy of chosen tables, with a row limit, for the forecast.

The source is a database on the main server (at head, with sample data); the copy is a scratch
cluster of the test's own, on a free port, run by the ``postgres`` OS user (the tests run as root).
"""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import commands, database, scratch
from schema_engine.errors import ForecastUnavailable, LogicalCopyRefused, TablesUnreadable
from schema_engine.forecast import leftovers, logical, stored
from schema_engine.forecast.server import Clone
from schema_engine.progress import Event
from tests.conftest import REVISIONS, ROOT, call, django_url, error_lines, run_sql, wait_for

# The models' tables that get no rows unless named or referenced (the sample data fills them all).
UNREFERENCED = ("call_notes", "agent_transitions", "tier_escalation_events", "workflow_traces", "agent_executions",
                "performance_metrics", "system_metrics")
# Stands in for the killed run: copies one call, says where, waits for its standard input to close.
CHILD = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()
from pathlib import Path
from schema_engine.forecast import logical
with logical.copied(sys.argv[1], tables=["calls"], row_limit=1, root=Path(sys.argv[2])) as copy:
    print("ready", copy.folder, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def source(make_database: Callable[..., sa.URL]) -> sa.URL:
    """A database at head with sample data."""
    url = make_database("postgresql", at_head=True)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=12, seed=5)
    return url


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A scratch root the ``postgres`` user may pass through (pytest's own folders are 0700)."""
    with tempfile.TemporaryDirectory(prefix="forecast-logical-", dir="/tmp") as name:
        os.chmod(name, 0o711)
        yield Path(name)
        for folder in Path(name).iterdir():  # a copy a failed test left running
            leftovers.remove(folder)


@pytest.fixture
def roles(postgres_admin: sa.Engine) -> Iterator[Callable[[str, str], str]]:
    """Return a factory of roles on the server (``make(prefix, attributes)``), dropped after the test."""
    made: list[str] = []

    def make(prefix: str, attributes: str) -> str:
        made.append(scratch.unique_name(prefix))
        with postgres_admin.connect() as conn:
            conn.execute(sa.text(f'CREATE ROLE "{made[-1]}" {attributes}'))
        return made[-1]

    yield make
    with postgres_admin.connect() as conn:
        for role in made:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))


def rows(url: sa.URL, query: str) -> list[tuple]:
    with database.psycopg_connection(url) as conn:
        return conn.execute(query).fetchall()


def values(url: sa.URL, query: str) -> list:
    return [row[0] for row in rows(url, query)]


def assert_gone(copy: Clone, postmaster: int) -> None:
    assert not copy.folder.exists() and not leftovers.processes_using(copy.folder)
    # Its pid file is gone a moment before the server's process: the state waited for is the process's end.
    wait_for(lambda: not alive(postmaster), timeout=30)


def postmaster_of(folder: Path) -> int:
    return int((folder / "data" / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_logical_copy_holds_the_newest_rows_what_they_reference_the_bookkeeping_and_the_roles(
        source: sa.URL, scratch_root: Path, roles: Callable[[str, str], str]) -> None:
    app, owner = roles("forecast_app", "LOGIN"), roles("forecast_owner", "NOLOGIN")
    run_sql(source, f'GRANT SELECT ON calls TO "{app}"')
    # Tables the models do not declare: one left whole; two named (limited), the newest children
    # referencing the oldest parents through a key of two columns.
    run_sql(source, "CREATE TABLE forecast_extra (id serial PRIMARY KEY, note text NOT NULL)")
    run_sql(source, f'ALTER TABLE forecast_extra OWNER TO "{owner}"')
    run_sql(source, "INSERT INTO forecast_extra (note) VALUES ('one'), ('two'), ('three')")
    run_sql(source, "CREATE TABLE forecast_parent (a int, b text, PRIMARY KEY (a, b))")
    run_sql(source, "CREATE TABLE forecast_child (id serial PRIMARY KEY, a int, b text, "
                    "FOREIGN KEY (a, b) REFERENCES forecast_parent)")
    run_sql(source, "INSERT INTO forecast_parent SELECT i, 'p' || i FROM generate_series(1, 20) i")
    run_sql(source, "INSERT INTO forecast_child (a, b) SELECT 11 - i, 'p' || (11 - i) FROM generate_series(1, 10) i")
    try:
        events: list[Event] = []
        with logical.copied(source, tables=["conversation_history", "forecast_parent", "forecast_child"],
                            row_limit=5, root=scratch_root, reporter=events.append) as copy:
            url = copy.local_url
            newest = values(source, "SELECT id FROM conversation_history ORDER BY id DESC LIMIT 5")
            assert values(url, "SELECT id FROM conversation_history ORDER BY id DESC") == newest
            # Their calls, and those calls' contacts: nothing more, and every foreign key holds.
            listed = ", ".join(map(str, newest))
            assert sorted(values(url, "SELECT id FROM calls")) == sorted(values(
                source, f"SELECT DISTINCT call_id FROM conversation_history WHERE id IN ({listed})"))
            assert sorted(values(url, "SELECT id FROM contacts")) == sorted(values(
                url, "SELECT DISTINCT contact_id FROM calls"))
            assert values(url, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated") == [0]
            assert all(values(url, f"SELECT count(*) FROM {table}") == [0] for table in UNREFERENCED)
            assert values(source, "SELECT count(*) FROM call_notes")[0] > 0  # the source has them
            # The engine's bookkeeping and a table the models do not know: whole, with their owner.
            assert values(url, "SELECT version_num FROM alembic_version") == values(
                source, "SELECT version_num FROM alembic_version")
            assert values(url, "SELECT count(*) FROM alembic_revision_checksums") == values(
                source, "SELECT count(*) FROM alembic_revision_checksums")
            assert values(url, "SELECT note FROM forecast_extra ORDER BY id") == ["one", "two", "three"]
            assert values(url, "SELECT tableowner FROM pg_tables WHERE tablename = 'forecast_extra'") == [owner]
            # Named, an undeclared table is limited too; its children's parents come along.
            assert values(url, "SELECT id FROM forecast_child ORDER BY id") == [6, 7, 8, 9, 10]
            assert values(url, "SELECT a FROM forecast_parent ORDER BY a") == [1, 2, 3, 4, 5, 16, 17, 18, 19, 20]
            # The roles, their attributes and grants; no passwords.
            assert rows(url, f"SELECT rolcanlogin, has_table_privilege(rolname, 'calls', 'SELECT') FROM pg_roles "
                             f"WHERE rolname = '{app}'") == [(True, True)]
            assert rows(url, f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{owner}'") == [(False,)]
            # New ids follow the source's.
            assert values(url, "SELECT nextval(pg_get_serial_sequence('conversation_history', 'id'))")[0] > max(newest)
            assert copy.description == "logical: conversation_history, forecast_parent, forecast_child ≤ 5 rows each"
            assert copy.os_user == ("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
            assert copy.folder.parent == scratch_root and (copy.folder.stat().st_mode & 0o777) == 0o700
            assert copy.bytes > 0 and copy.seconds > 0 and copy.source_bytes > 0
            postmaster = postmaster_of(copy.folder)
        (started,) = [event for event in events if isinstance(event, logical.LogicalCopyStarted)]
        (ready,) = [event for event in events if isinstance(event, logical.LogicalCopyReady)]
        assert started.folder == str(copy.folder) and started.row_limit == 5
        assert dict(ready.rows)["conversation_history"] == 5 and dict(ready.rows)["forecast_parent"] == 10
        assert ready.port == copy.port and ready.bytes == copy.bytes
        assert_gone(copy, postmaster)
    finally:
        run_sql(source, f'DROP OWNED BY "{app}", "{owner}"')


def test_the_copy_is_removed_after_an_exception(pg_head_db: sa.URL, scratch_root: Path) -> None:
    with pytest.raises(RuntimeError, match="inside the block"):
        with logical.copied(pg_head_db, tables=["calls"], row_limit=1, root=scratch_root) as copy:
            postmaster = postmaster_of(copy.folder)
            assert alive(postmaster)
            raise RuntimeError("inside the block")
    assert_gone(copy, postmaster)
    assert not list(scratch_root.iterdir())


def test_a_copy_left_by_a_killed_run_is_removed_by_the_next(pg_head_db: sa.URL, scratch_root: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, django_url(pg_head_db), str(scratch_root)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = child.stdout.readline().split()  # type: ignore[union-attr]
    assert said[:1] == ["ready"], child.communicate()[1]
    folder = Path(said[1])
    child.kill()
    child.wait()
    postmaster = postmaster_of(folder)
    assert alive(postmaster)  # its server runs on, detached
    events: list[Event] = []
    with logical.copied(pg_head_db, tables=["calls"], row_limit=1, root=scratch_root,
                        reporter=events.append) as copy:
        assert [event.folder for event in events if isinstance(event, leftovers.LeftoverRemoved)] == [str(folder)]
        assert [path.name for path in scratch_root.iterdir()] == [copy.folder.name]
    assert not folder.exists()
    wait_for(lambda: not alive(postmaster), timeout=30)  # ended by SIGQUIT


@pytest.mark.parametrize(("tables", "row_limit", "said"), [
    ([], 10, "a logical copy needs the tables to copy rows of: name one or more"),
    (["  "], 10, "a logical copy needs the tables to copy rows of"),
    (["calls"], 0, "a logical copy's row limit must be a whole number of 1 or more, not 0"),
    (["nope"], 10, "there is no table nope in the database test_reautomation_"),
    (["a.b.c.d"], 10, "there is no table a.b.c.d in the database"),
    (["forecast_keyless"], 10, "table forecast_keyless has no primary key to tell its newest rows by"),
])
def test_what_cannot_be_copied_is_refused_in_one_line_before_anything_is_made(
        pg_head_db: sa.URL, scratch_root: Path, tables: list[str], row_limit: int, said: str) -> None:
    run_sql(pg_head_db, "CREATE TABLE forecast_keyless (note text)")
    with pytest.raises(LogicalCopyRefused, match=said) as refused:
        with logical.copied(pg_head_db, tables=tables, row_limit=row_limit, root=scratch_root):
            pass
    assert isinstance(refused.value, ForecastUnavailable) and "\n" not in str(refused.value)
    assert not list(scratch_root.iterdir())


def test_a_role_that_may_not_read_a_table_is_refused_naming_the_grant(
        pg_head_db: sa.URL, scratch_root: Path, roles: Callable[[str, str], str]) -> None:
    reader = roles("forecast_reader", "LOGIN")
    run_sql(pg_head_db, f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"')
    run_sql(pg_head_db, f'REVOKE SELECT ON contacts FROM "{reader}"')
    run_sql(pg_head_db, f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO "{reader}"')
    try:
        with pytest.raises(TablesUnreadable, match=f"role {reader} may not read contacts .*: run 'GRANT SELECT ON "
                                                   f"contacts TO {reader}' as their owner") as refused:
            with logical.copied(pg_head_db.set(username=reader), tables=["calls"], row_limit=1, root=scratch_root):
                pass
        assert refused.value.relations == ("contacts",) and "\n" not in str(refused.value)
        assert not list(scratch_root.iterdir())
    finally:
        run_sql(pg_head_db, f'DROP OWNED BY "{reader}"')


# --- the forecast on it, from the command line ------------------------------------------------------

def test_a_forecast_on_a_logical_copy_says_so_and_measures_the_pending_revision(
        make_database: Callable[..., sa.URL], tmp_path: Path) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision=REVISIONS[-2], url=url)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=12, seed=26)
    last = tmp_path / "last.json"
    done = call(url, "migrate_schema", "forecast", "--tables", "conversation_history,calls", "--rows", "20",
                "--sample-batches", "1", FORECAST_LAST_FILE=str(last))
    assert done.returncode == 0, done.stdout + done.stderr
    first = next(line for line in done.stdout.splitlines() if line.startswith("Forecast on a copy of"))
    assert "(logical: conversation_history, calls ≤ 20 rows each; " in first
    assert f"revision {REVISIONS[-1]}" in done.stdout and "FAILED" not in done.stdout
    kept = json.loads(last.read_text())["forecast"]
    assert kept["copy"] == "logical: conversation_history, calls ≤ 20 rows each"
    assert stored.load(last).forecast.copy == kept["copy"]  # type: ignore[union-attr]
    assert kept["revisions"][0]["revision"] == REVISIONS[-1] and kept["revisions"][0]["seconds"] > 0
    assert values(url, "SELECT version_num FROM alembic_version") == [REVISIONS[-2]]  # the source is untouched


def test_a_replica_follows_a_logical_copy_made_by_a_role_without_replication_or_stats(
        unprivileged_roles: tuple[sa.URL, sa.URL], tmp_path: Path) -> None:
    """A migration role that owns its tables and nothing more: the copy's own superuser makes its replica."""
    migrator, _application = unprivileged_roles
    commands.upgrade(revision=REVISIONS[-2], url=migrator)
    with database.connect(migrator) as conn:
        generate_sample_data(connection=conn, calls=12, seed=26)
    done = call(migrator, "migrate_schema", "forecast", "--tables", "conversation_history,calls", "--rows", "20",
                "--sample-batches", "1", "--replica", "--json", FORECAST_LAST_FILE=str(tmp_path / "last.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    (revision,) = json.loads(done.stdout)["forecast"]["revisions"]
    assert revision["revision"] == REVISIONS[-1] and not revision["error"] and revision["replica_lag"] is not None


@pytest.mark.parametrize(("args", "said"), [
    (["--rows", "10"], "--rows goes with --tables"),
    (["--tables", " , "], "--tables needs the tables to copy"),
    (["--tables", "calls", "--rows", "0"], "--rows must be 1 or more (got 0)"),
])
def test_the_command_refuses_rows_without_tables_in_one_line(pg_head_db: sa.URL, args: list[str], said: str) -> None:
    done = call(pg_head_db, "migrate_schema", "forecast", *args)
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert line.startswith("CommandError: ") and said in line


def test_a_source_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ForecastUnavailable, match="needs the PostgreSQL primary"):
        with logical.copied(f"sqlite:///{tmp_path / 'db.sqlite3'}", tables=["calls"], row_limit=1):
            pass

