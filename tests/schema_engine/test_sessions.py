"""What needs a session of its own (migrations, backfill coordination) uses MIGRATION_DATABASE_URL, never a pooler."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from schema_engine import commands, database, guard, state
from tests.conftest import HEAD, alembic_cli, django_url, manage

POOLER = {"DATABASE_POOL_MODE": "transaction"}


def test_the_engine_works_on_migration_database_url(make_database) -> None:
    through_pooler, primary = make_database("postgresql"), make_database("postgresql")
    result = manage(through_pooler, "migrate_schema", MIGRATION_DATABASE_URL=django_url(primary), **POOLER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"Database: postgresql+psycopg://postgres@127.0.0.1:5432/{primary.database}"
    assert state.status(url=primary).current == (HEAD,)
    assert state.status(url=through_pooler).current == ()  # DATABASE_URL's database was not touched


@pytest.mark.parametrize("command", [["migrate_schema"], ["migrate_schema", "current"], ["backfill_context"],
                                     ["backfill_context", "--pause"]], ids=lambda c: "-".join(c))
def test_through_a_transaction_pooler_without_a_session_url_the_work_is_refused(pg_head_db: sa.URL,
                                                                               command: list[str]) -> None:
    result = manage(pg_head_db, *command, **POOLER)
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines()]
    assert len(lines) == 1 and "set MIGRATION_DATABASE_URL to the primary itself" in lines[0], result.stderr


def test_the_alembic_cli_refuses_the_same_in_one_line(pg_head_db: sa.URL) -> None:
    result = alembic_cli(pg_head_db, "upgrade", "head", **POOLER)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "set MIGRATION_DATABASE_URL" in result.stdout


def test_django_behind_a_transaction_pooler_keeps_no_session_state(pg_head_db: sa.URL) -> None:
    probe = ("from django.conf import settings; d = settings.DATABASES['default']; "
             "print(d['DISABLE_SERVER_SIDE_CURSORS'], d['CONN_MAX_AGE'], d['OPTIONS']['prepare_threshold'])")
    result = manage(pg_head_db, "shell", "-v", "0", "-c", probe, **POOLER)
    assert result.stdout.split() == ["True", "0", "None"], result.stderr
    commands.check(url=pg_head_db)  # the schema itself is the same either way


def test_a_bad_pool_mode_is_one_line(pg_head_db: sa.URL) -> None:
    result = manage(pg_head_db, "migrate_schema", "current", DATABASE_POOL_MODE="statement")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "manage.py: configuration error: DATABASE_POOL_MODE='statement' is not one of session, transaction"]


def test_a_direct_connection_is_a_session_of_its_own(pg_db: sa.URL) -> None:
    database.require_session(pg_db)  # no pooler between: nothing to refuse


def test_the_settings_the_engine_sets_are_reset_as_the_connection_goes_back_to_its_pool(pg_db: sa.URL) -> None:
    # A pool of one: the next checkout is the same server session, as a pooler's next client would get it.
    engine = database.create_engine(pg_db, poolclass=sa.pool.QueuePool, pool_size=1, max_overflow=0)
    guard_settings = guard.GuardSettings(lock_wait_seconds=1, lock_timeout="2s", statement_timeout="3min",
                                         lock_retries=0, retry_pause_seconds=0)
    shown = ("SELECT pg_backend_pid(), current_setting('lock_timeout'), current_setting('statement_timeout'), "
             "current_setting('synchronous_commit'), current_setting('application_name')")
    try:
        with engine.connect() as conn:
            guard.set_timeouts(conn, guard_settings)
            with conn.begin():
                database.set_session(conn, {"synchronous_commit": "off"})
            pid, *during = conn.exec_driver_sql(shown).one()
            assert during[:3] == ["2s", "3min", "off"] and during[3].startswith("migrate_schema@")
        with engine.connect() as conn:
            again, *after = conn.exec_driver_sql(shown).one()
        assert again == pid and after == ["0", "0", "on", ""]
    finally:
        engine.dispose()
