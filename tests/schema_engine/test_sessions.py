"""What needs a session of its own (migrations, backfill coordination) uses MIGRATION_DATABASE_URL, never a pooler."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from schema_engine import commands, state
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
